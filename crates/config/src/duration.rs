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
        humantime::parse_rfc3339_weak(s.trim())
            .map(Timestamp)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{s}` is not an RFC 3339 time like 2027-03-15T00:00:00Z ({e})"
                ))
            })
    }
}
