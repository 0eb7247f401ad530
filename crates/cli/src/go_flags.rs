//! flyctl parses its flags with Go's pflag; clap differs in two ways users notice. Booleans
//! take `--flag=true|false` there, and a repeated flag's last value wins (the latter is clap's
//! `args_override_self`, set on the root command).

/// Go's flag package (flyctl's) accepts `--flag=true` and `--flag=false` for boolean flags,
/// which clap's value-less flags refuse. Rewrites them for the (sub)command they belong to:
/// `--rm=true` becomes `--rm`; `--rm=false` is dropped together with any earlier `--rm` of the
/// same command (the last value wins, as in pflag). Other arguments pass unchanged; values of
/// flags (`-a list`, `--name run`) are never taken for subcommands or flags.
pub fn go_bool_flags(
    root: &clap::Command,
    args: Vec<std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    // The commands entered so far: a flag may belong to the current one or to an ancestor
    // (global and flattened arguments).
    let mut path: Vec<&clap::Command> = vec![root];
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(bin) = iter.next() {
        out.push(bin);
    }
    // Where the current command's own arguments begin in `out`.
    let mut scope = out.len();
    let mut skip_value = false;
    let mut positional_only = false;
    let find = |path: &[&clap::Command], pred: &dyn Fn(&clap::Arg) -> bool| -> Option<clap::Arg> {
        path.iter()
            .rev()
            .find_map(|c| c.get_arguments().find(|a| pred(a)).cloned())
    };
    let takes_value = |a: &clap::Arg| {
        a.get_action().takes_values() && a.get_num_args().is_none_or(|n| n.min_values() > 0)
    };
    for arg in iter {
        let text = arg.to_string_lossy().into_owned();
        if positional_only || std::mem::take(&mut skip_value) {
            out.push(arg);
            continue;
        }
        if text == "--" {
            positional_only = true;
            out.push(arg);
            continue;
        }
        if let Some(flag) = text.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (flag, None),
            };
            let found = find(&path, &|a: &clap::Arg| {
                a.get_long() == Some(name)
                    || a.get_all_aliases().is_some_and(|al| al.contains(&name))
            });
            match (found, value) {
                (Some(a), Some(v)) if matches!(a.get_action(), clap::ArgAction::SetTrue) => {
                    match v.to_ascii_lowercase().as_str() {
                        "true" | "t" | "1" => out.push(format!("--{name}").into()),
                        "false" | "f" | "0" => {
                            let spellings: Vec<String> = a
                                .get_long()
                                .into_iter()
                                .chain(a.get_all_aliases().unwrap_or_default())
                                .map(|l| format!("--{l}"))
                                .chain(a.get_short().map(|c| format!("-{c}")))
                                .collect();
                            let mut i = scope;
                            while i < out.len() {
                                if spellings.iter().any(|sp| out[i] == sp.as_str()) {
                                    out.remove(i);
                                } else {
                                    i += 1;
                                }
                            }
                        }
                        _ => out.push(arg),
                    }
                }
                (Some(a), None) if takes_value(&a) => {
                    // `--flag value`: the next argument is the value.
                    skip_value = true;
                    out.push(arg);
                }
                _ => out.push(arg),
            }
            continue;
        }
        if let Some(shorts) = text.strip_prefix('-').filter(|s| !s.is_empty()) {
            // As clap reads `-fa app`, `-aapp` and `-a=app`: letters are flags until one takes
            // a value; the rest of the word is that value, or the next argument when nothing
            // is left.
            let letters: Vec<char> = shorts.chars().collect();
            for (i, &c) in letters.iter().enumerate() {
                let found = find(&path, &|a: &clap::Arg| a.get_short() == Some(c));
                if found.as_ref().is_some_and(takes_value) {
                    skip_value = i + 1 == letters.len();
                    break;
                }
            }
            out.push(arg);
            continue;
        }
        if let Some(sub) = path.last().and_then(|c| c.find_subcommand(&text)) {
            path.push(sub);
            out.push(arg);
            scope = out.len();
            continue;
        }
        out.push(arg);
    }
    out
}
