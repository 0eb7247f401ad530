//! Identifier shapes of the Machines API: 14-hex machine ids, ULID versions, lease nonces and
//! `adjective-noun-NNNN` machine names.

use rand::Rng;

pub fn new_machine_id() -> String {
    let n: u64 = rand::rng().random_range(0..(1u64 << 56));
    format!("{n:014x}")
}

/// A volume id as Fly writes them: `vol_` and 16 lowercase letters and digits.
pub fn new_volume_id() -> String {
    format!("vol_{}", random_alnum(16))
}

/// A snapshot id: `vs_` and 16 lowercase letters and digits.
pub fn new_snapshot_id() -> String {
    format!("vs_{}", random_alnum(16))
}

fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

pub fn is_machine_id(s: &str) -> bool {
    s.len() == 14
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

pub fn new_ulid() -> String {
    ulid::Ulid::new().to_string()
}

pub fn new_nonce() -> String {
    let n: u64 = rand::rng().random_range(0..(1u64 << 48));
    format!("{n:012x}")
}

/// App ids: 16 alphanumeric characters.
pub fn new_app_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

const ADJECTIVES: &[&str] = &[
    "aged",
    "ancient",
    "autumn",
    "billowing",
    "bitter",
    "black",
    "blue",
    "bold",
    "broad",
    "broken",
    "calm",
    "cold",
    "cool",
    "crimson",
    "curly",
    "damp",
    "dark",
    "dawn",
    "delicate",
    "divine",
    "dry",
    "empty",
    "falling",
    "fancy",
    "flat",
    "floral",
    "fragrant",
    "frosty",
    "gentle",
    "green",
    "hidden",
    "holy",
    "icy",
    "jolly",
    "late",
    "lingering",
    "little",
    "lively",
    "long",
    "lucky",
    "misty",
    "morning",
    "muddy",
    "mute",
    "nameless",
    "noisy",
    "odd",
    "old",
    "orange",
    "patient",
    "plain",
    "polished",
    "proud",
    "purple",
    "quiet",
    "rapid",
    "raspy",
    "red",
    "restless",
    "rough",
    "round",
    "royal",
    "shiny",
    "shrill",
    "shy",
    "silent",
    "small",
    "snowy",
    "soft",
    "solitary",
    "sparkling",
    "spring",
    "square",
    "steep",
    "still",
    "summer",
    "super",
    "sweet",
    "throbbing",
    "tight",
    "tiny",
    "twilight",
    "wandering",
    "weathered",
    "white",
    "wild",
    "winter",
    "wispy",
    "withered",
    "yellow",
    "young",
];

const NOUNS: &[&str] = &[
    "art",
    "band",
    "bar",
    "base",
    "bird",
    "block",
    "boat",
    "bonus",
    "bread",
    "breeze",
    "brook",
    "bush",
    "butterfly",
    "cake",
    "cell",
    "cherry",
    "cloud",
    "credit",
    "darkness",
    "dawn",
    "dew",
    "disk",
    "dream",
    "dust",
    "feather",
    "field",
    "fire",
    "firefly",
    "flower",
    "fog",
    "forest",
    "frog",
    "frost",
    "glade",
    "glitter",
    "grass",
    "hall",
    "hat",
    "haze",
    "heart",
    "hill",
    "king",
    "lab",
    "lake",
    "leaf",
    "limit",
    "math",
    "meadow",
    "mode",
    "moon",
    "morning",
    "mountain",
    "mouse",
    "mud",
    "night",
    "paper",
    "pine",
    "poetry",
    "pond",
    "queen",
    "rain",
    "recipe",
    "resonance",
    "rice",
    "river",
    "salad",
    "scene",
    "sea",
    "shadow",
    "shape",
    "silence",
    "sky",
    "smoke",
    "snow",
    "snowflake",
    "sound",
    "star",
    "sun",
    "sunset",
    "surf",
    "term",
    "thunder",
    "tooth",
    "tree",
    "truth",
    "union",
    "unit",
    "violet",
    "voice",
    "water",
    "waterfall",
    "wave",
    "wildflower",
    "wind",
    "wood",
];

pub fn new_machine_name() -> String {
    let mut rng = rand::rng();
    format!(
        "{}-{}-{:04}",
        ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
        NOUNS[rng.random_range(0..NOUNS.len())],
        rng.random_range(0..10000)
    )
}

/// Fly's app-name rule: lowercase letters, digits and dashes, starting with a letter or digit,
/// at most 63 characters (a DNS label, since `<app>.internal` must resolve).
pub fn check_app_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("app name must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("app name {name:?} is longer than 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "app name {name:?} may only contain lowercase letters, digits and dashes"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "app name {name:?} must not start or end with a dash"
        ));
    }
    Ok(())
}

/// Machine names: like app names but also `_`, since Fly accepts user-chosen names freely.
pub fn check_machine_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("machine name must be 1 to 63 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "machine name {name:?} may only contain letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_shapes() {
        for _ in 0..100 {
            assert!(is_machine_id(&new_machine_id()));
            assert_eq!(new_nonce().len(), 12);
            assert_eq!(new_ulid().len(), 26);
            let name = new_machine_name();
            let parts: Vec<_> = name.split('-').collect();
            assert_eq!(parts.len(), 3, "{name}");
            assert_eq!(parts[2].len(), 4);
        }
    }

    #[test]
    fn test_app_names() {
        assert!(check_app_name("my-app-1").is_ok());
        for bad in ["", "My-App", "a_b", "-a", "a-", "a b", &"x".repeat(64)] {
            assert!(check_app_name(bad).is_err(), "{bad}");
        }
    }
}
