//! Signals as the API carries them: names (`"SIGTERM"`) or integers (fly-go's `Kill` sends `9`).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;

/// Linux signal numbers and names (x86_64/aarch64 numbering).
const SIGNALS: &[(i32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (5, "SIGTRAP"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (21, "SIGTTIN"),
    (22, "SIGTTOU"),
    (23, "SIGURG"),
    (24, "SIGXCPU"),
    (25, "SIGXFSZ"),
    (26, "SIGVTALRM"),
    (27, "SIGPROF"),
    (28, "SIGWINCH"),
    (29, "SIGIO"),
    (30, "SIGPWR"),
    (31, "SIGSYS"),
];

/// Signals accepted by `stop` and `stop_config` (Fly's StopRequest enum).
pub const STOP_SIGNALS: &[&str] = &[
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGTERM",
];

/// Signals accepted by the `signal` endpoint (Fly's SignalRequest enum).
pub const SIGNAL_REQUEST_SIGNALS: &[&str] = &[
    "SIGABRT", "SIGALRM", "SIGFPE", "SIGHUP", "SIGILL", "SIGINT", "SIGKILL", "SIGPIPE", "SIGQUIT",
    "SIGSEGV", "SIGTERM", "SIGTRAP", "SIGUSR1", "SIGUSR2",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

impl Signal {
    pub const SIGINT: Signal = Signal(2);
    pub const SIGKILL: Signal = Signal(9);
    pub const SIGTERM: Signal = Signal(15);

    pub fn from_number(n: i64) -> Result<Self, UnknownSignal> {
        SIGNALS
            .iter()
            .find(|(num, _)| i64::from(*num) == n)
            .map(|(num, _)| Signal(*num))
            .ok_or_else(|| UnknownSignal(n.to_string()))
    }

    /// Accepts `SIGTERM`, `TERM`, `sigterm` or a number in a string (`"9"`).
    pub fn parse(s: &str) -> Result<Self, UnknownSignal> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i64>() {
            return Self::from_number(n).map_err(|_| UnknownSignal(s.to_string()));
        }
        let upper = t.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(num, _)| Signal(*num))
            .ok_or_else(|| UnknownSignal(s.to_string()))
    }

    pub fn number(&self) -> i32 {
        self.0
    }

    pub fn name(&self) -> &'static str {
        SIGNALS
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| *name)
            .unwrap_or("SIGUNKNOWN")
    }

    pub fn is_one_of(&self, names: &[&str]) -> bool {
        names.contains(&self.name())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Signal;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a signal name such as \"SIGTERM\" or a signal number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Signal, E> {
                Signal::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Signal, E> {
                Signal::from_number(v.min(i64::MAX as u64) as i64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Signal, E> {
                Signal::from_number(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl utoipa::PartialSchema for Signal {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .description(Some(
                "Signal name such as \"SIGTERM\"; an integer is also accepted",
            ))
            .enum_values(Some(SIGNAL_REQUEST_SIGNALS.iter().copied()))
            .into()
    }
}

impl utoipa::ToSchema for Signal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_and_numbers() {
        assert_eq!(Signal::parse("SIGTERM").unwrap().number(), 15);
        assert_eq!(Signal::parse("term").unwrap().number(), 15);
        assert_eq!(Signal::parse("9").unwrap().name(), "SIGKILL");
        let s: Signal = serde_json::from_str("9").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"SIGKILL\"");
        assert!(Signal::parse("SIGFOO").is_err());
        assert!(serde_json::from_str::<Signal>("99").is_err());
    }
}
