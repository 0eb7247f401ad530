//! Container users: `user`, `uid`, `user:group` or `uid:gid`, looked up in the container's
//! /etc/passwd and /etc/group text, as Docker does.

/// The most of /etc/passwd or /etc/group that is read: a real one is kilobytes; an image must
/// not make a lookup read gigabytes.
pub const MAX_DB_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
    /// Supplementary groups: every /etc/group entry that lists the user by name, as Docker sets
    /// them (the primary gid is not repeated).
    pub groups: Vec<u32>,
}

/// Resolves `spec` against the texts of /etc/passwd and /etc/group. A numeric uid that has no
/// passwd entry is still valid (its gid is the uid, its home `/`, or `/root` for root); a name
/// must exist.
pub fn lookup(spec: &str, passwd: &str, group: &str) -> Result<User, String> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    // name:x:uid:gid:gecos:home:shell
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && (f[0] == user || f[2] == user));
    let mut found = match (entry, user.parse::<u32>()) {
        (Some(f), _) => User {
            uid: f[2]
                .parse()
                .map_err(|_| format!("bad uid for user {user} in /etc/passwd"))?,
            gid: f[3]
                .parse()
                .map_err(|_| format!("bad gid for user {user} in /etc/passwd"))?,
            name: f[0].to_string(),
            home: f
                .get(5)
                .filter(|h| !h.is_empty())
                .unwrap_or(&"/")
                .to_string(),
            groups: Vec::new(),
        },
        (None, Ok(uid)) => User {
            uid,
            gid: uid,
            name: uid.to_string(),
            // Root keeps its usual home even in an image without /etc/passwd.
            home: if uid == 0 { "/root" } else { "/" }.to_string(),
            groups: Vec::new(),
        },
        (None, Err(_)) => return Err(format!("user {user:?} not found in /etc/passwd")),
    };
    if let Some(g) = group_spec {
        found.gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} not found in /etc/group"))?,
        };
    }
    // name:x:gid:member,member
    let mut groups: Vec<u32> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m.trim() == found.name))
        .filter_map(|f| f[2].parse().ok())
        .filter(|&g| g != found.gid)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    found.groups = groups;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\napp:x:1000:\nstaff:x:50:\nwheel:x:10:root,app\naudio:x:29:app\n";

    #[test]
    fn test_names_numbers_and_groups() {
        assert_eq!(lookup("app", PASSWD, GROUP).unwrap().uid, 1000);
        assert_eq!(lookup("app", PASSWD, GROUP).unwrap().home, "/home/app");
        assert_eq!(lookup("1000", PASSWD, GROUP).unwrap().name, "app");
        assert_eq!(lookup("app:staff", PASSWD, GROUP).unwrap().gid, 50);
        assert_eq!(
            lookup("4242:7", PASSWD, GROUP).unwrap(),
            User {
                uid: 4242,
                gid: 7,
                name: "4242".into(),
                home: "/".into(),
                groups: vec![],
            }
        );
        assert_eq!(lookup("0", "", "").unwrap().home, "/root");
        assert!(lookup("nobody", PASSWD, GROUP).is_err());
        assert!(lookup("app:video", PASSWD, GROUP).is_err());
        assert_eq!(lookup("app", PASSWD, GROUP).unwrap().groups, vec![10, 29]);
        assert_eq!(lookup("1000", PASSWD, GROUP).unwrap().groups, vec![10, 29]);
        assert_eq!(lookup("root", PASSWD, GROUP).unwrap().groups, vec![10]);
        assert_eq!(lookup("app:audio", PASSWD, GROUP).unwrap().groups, vec![10]);
    }
}
