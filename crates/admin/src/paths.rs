//! Which paths belong to which API. A path one API serves is that API's, whatever the
//! methods: letting a second API (maybe another tenant's) share it would let it answer, or
//! shadow, requests meant for the first. The router alone only refuses exact duplicates.

use crate::error::FieldError;
use tollgate_config::{Api, Config, ListenerName, OverlayApi, Route};
use tollgate_proxy::router::templates_overlap;

const BOTH: &[ListenerName] = &[ListenerName::Public, ListenerName::Tls];

/// Path templates already served, with the listeners they are served on and who serves them
/// (`tenant/api`; for the operator's log, never for a tenant's answer).
#[derive(Debug, Default)]
pub struct TakenPaths {
    taken: Vec<(String, Vec<ListenerName>, String)>,
}

fn listeners(a: &Api, r: &Route) -> Vec<ListenerName> {
    r.listeners
        .clone()
        .or_else(|| a.listeners.clone())
        .unwrap_or_else(|| BOTH.to_vec())
}

impl TakenPaths {
    /// Every route of `cfg` except those of `except` (tenant, API), and the token issuer's
    /// own paths when it is on.
    pub fn of(cfg: &Config, except: Option<(&str, &str)>) -> Self {
        let mut me = Self::default();
        for (tn, t) in &cfg.tenants {
            for (an, a) in &t.apis {
                if except != Some((tn.as_str(), an.as_str())) {
                    me.add(&format!("{tn}/{an}"), a);
                }
            }
        }
        if cfg.identity.token_issuer.is_some() {
            for p in ["/oauth2/token", "/.well-known/jwks.json"] {
                me.taken
                    .push((p.to_owned(), BOTH.to_vec(), "the token issuer".into()));
            }
        }
        me
    }

    pub fn add(&mut self, owner: &str, api: &Api) {
        for r in &api.routes {
            self.taken
                .push((r.path.clone(), listeners(api, r), owner.to_owned()));
        }
    }

    /// Each route of `api` a taken one overlaps, and the first owner found.
    fn overlaps<'s>(&'s self, api: &'s Api) -> impl Iterator<Item = (&'s Route, &'s str)> + 's {
        api.routes.iter().filter_map(move |r| {
            let ls = listeners(api, r);
            self.taken
                .iter()
                .find(|(p, l, _)| templates_overlap(&r.path, p) && l.iter().any(|x| ls.contains(x)))
                .map(|(_, _, owner)| (r, owner.as_str()))
        })
    }

    /// Each path of `api` that some request path could reach through a taken route on a
    /// listener both serve, as a problem at the path (RFC 6901 pointer). The other API is not
    /// named: it may be another tenant's.
    pub fn clashes(&self, api: &Api) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = Vec::new();
        for (r, _) in self.overlaps(api) {
            let pointer = format!("/paths/{}", r.path.replace('~', "~0").replace('/', "~1"));
            if !errors.iter().any(|e| e.pointer == pointer) {
                errors.push(FieldError::new(
                    pointer,
                    format!(
                        "`{}` overlaps a path another API serves: a request could match both",
                        r.path
                    ),
                ));
            }
        }
        errors
    }
}

/// Splits stored APIs, oldest first, into those that fit beside the file's routes and the
/// APIs kept before them, and those that do not, each with why (for the operator's log).
/// Writes are checked for this before they are stored, so a stored set only fails it when the
/// config file took a path since (or the rows were written by hand): then the API that came
/// later loses, not every change after it.
pub fn fitting_apis(
    file: &Config,
    apis: Vec<OverlayApi>,
) -> (Vec<OverlayApi>, Vec<(OverlayApi, String)>) {
    let mut taken = TakenPaths::of(file, None);
    let (mut kept, mut left) = (Vec::new(), Vec::new());
    for a in apis {
        let why = taken
            .overlaps(&a.api)
            .next()
            .map(|(r, owner)| format!("its path `{}` overlaps one {owner} serves", r.path));
        match why {
            None => {
                taken.add(&format!("{}/{}", a.tenant, a.id), &a.api);
                kept.push(a);
            }
            Some(why) => left.push((a, why)),
        }
    }
    (kept, left)
}
