use serde::{Deserialize, Deserializer};

/// A duration written the way operators write them: `500ms`, `3s`, `1m 30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| {
                serde::de::Error::custom(format!("`{s}` is not a duration like 500ms or 3s ({e})"))
            })
    }
}

/// An instant written as RFC 3339, e.g. `2027-03-15T00:00:00Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub std::time::SystemTime);

impl Timestamp {
    /// Seconds since the Unix epoch (negative instants clamp to 0).
    pub fn unix_seconds(self) -> u64 {
        self.0
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339(&s).map(Timestamp).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not an RFC 3339 time like 2027-03-15T00:00:00Z or 2027-03-15T01:00:00+01:00"
            ))
        })
    }
}

/// An RFC 3339 instant with any UTC offset (`Z`, `z`, `+01:00`, `-00:00`, fractional seconds),
/// or one of the looser forms accepted before (a space for the `T`).
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    let s = s.trim();
    match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => Some(t.into()),
        Err(_) => humantime::parse_rfc3339_weak(s).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339_instants_take_any_offset() {
        let at = |s: &str| {
            parse_rfc3339(s)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis())
        };
        let noon = Some(1_795_953_600_000); // 2026-11-29T12:00:00Z
        for s in [
            "2026-11-29T12:00:00Z",
            "2026-11-29t12:00:00z",
            "2026-11-29T13:00:00+01:00",
            "2026-11-29T07:00:00-05:00",
            "2026-11-29T12:00:00-00:00",
            "2026-11-29T12:00:00+00:00",
            " 2026-11-29T12:00:00Z ",
            "2026-11-29 12:00:00Z",
        ] {
            assert_eq!(at(s), noon, "{s}");
        }
        assert_eq!(at("2026-11-29T12:00:00.250Z"), noon.map(|n| n + 250));
        for bad in ["2026-11-29", "yesterday", "2026-13-01T00:00:00Z", ""] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
