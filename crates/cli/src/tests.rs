//! Argument parsing of every command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use hangar_api::Signal;

use super::*;
use crate::app_name::AppArgs;
use crate::apps::AppsCommand;
use crate::auth::AuthCommand;
use crate::machine::{
    DestroyArgs, IdsArgs, LeasesCommand, ListArgs, MachineArgs, MachineCommand, StatusArgs,
    StopArgs, WaitArgs,
};

/// Parses as `hangar` does, Go-style boolean values included.
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let argv = std::iter::once("hangar")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from)
        .collect();
    Cli::try_parse_from(crate::go_flags::go_bool_flags(&Cli::command(), argv))
}

fn machine(args: &[&str]) -> MachineArgs {
    let mut full = vec!["machine"];
    full.extend_from_slice(args);
    match parse(&full)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .command
    {
        Command::Machine(m) => m,
        other => panic!("{other:?}"),
    }
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_command_has_an_example() {
    fn walk(cmd: &clap::Command, path: &str) {
        let path = format!("{path} {}", cmd.get_name());
        if cmd.get_name() != "help" {
            let after = cmd
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(after.contains("Examples:"), "`{path}` has no example");
            assert!(
                cmd.get_about().is_some() || path == " hangar",
                "`{path}` has no description"
            );
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &path);
        }
    }
    walk(&Cli::command(), "");
}

#[test]
fn daemon_defaults_and_flags() {
    let nowhere = std::path::Path::new("/nonexistent/hangar.toml");
    let Command::Daemon(mut d) = parse(&["daemon"]).unwrap().command else {
        panic!()
    };
    // The test environment may set HANGAR_* variables; pin what is checked here.
    d.config = Some(nowhere.into());
    d.socket = None;
    d.listen = None;
    let err = d.resolve().unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/hangar.toml"),
        "a named config must exist: {err}"
    );

    let Command::Daemon(d) = parse(&[
        "daemon",
        "--data-dir",
        "/tmp/h",
        "--socket",
        "/tmp/h.sock",
        "--listen",
        "127.0.0.1:4280",
    ])
    .unwrap()
    .command
    else {
        panic!()
    };
    assert_eq!(d.data_dir, Some(PathBuf::from("/tmp/h")));
    assert_eq!(d.socket, Some(PathBuf::from("/tmp/h.sock")));
    assert_eq!(
        d.listen,
        Some("127.0.0.1:4280".parse::<SocketAddr>().unwrap())
    );

    let err = parse(&["daemon", "--listen", "nonsense"]).unwrap_err();
    assert!(one_line_clap_error(&err).contains("--listen"), "{err}");
}

/// The config file gives every daemon setting; flags win; a typo or a bad value names the key
/// and the file.
#[test]
fn daemon_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hangar.toml");
    std::fs::write(
        &file,
        "data_dir = \"/srv/hangar\"\nlisten = \"127.0.0.1:4399\"\nlog_retention = \"2h\"\n\
         memory_overcommit = 3.0\ninsecure_registries = [\"reg.local:5000\"]\n",
    )
    .unwrap();
    let args = |extra: &[&str]| {
        let mut argv = vec!["daemon", "--config", file.to_str().unwrap()];
        argv.extend_from_slice(extra);
        let Command::Daemon(mut d) = parse(&argv).unwrap().command else {
            panic!()
        };
        // Whatever HANGAR_* the environment sets is not what this test is about.
        if !extra.contains(&"--data-dir") {
            d.data_dir = None;
        }
        d.socket = None;
        d.log_retention = None;
        d.cpu_overcommit = None;
        d.memory_overcommit = None;
        d.listen = None;
        d
    };
    let o = args(&[]).resolve().unwrap();
    assert_eq!(o.data_dir, PathBuf::from("/srv/hangar"));
    assert_eq!(o.socket, PathBuf::from(hangar_daemon::DEFAULT_SOCKET));
    assert_eq!(o.listen, Some("127.0.0.1:4399".parse().unwrap()));
    assert_eq!(o.log_retention, std::time::Duration::from_secs(7200));
    assert_eq!(o.memory_overcommit, 3.0);
    assert_eq!(o.insecure_registries, vec!["reg.local:5000".to_string()]);
    let o = args(&["--data-dir", "/flag/wins"]).resolve().unwrap();
    assert_eq!(o.data_dir, PathBuf::from("/flag/wins"));

    std::fs::write(&file, "data_dri = \"/x\"\n").unwrap();
    let err = format!("{:#}", args(&[]).resolve().unwrap_err());
    assert!(
        err.contains("data_dri") && err.contains("hangar.toml"),
        "{err}"
    );
    std::fs::write(&file, "log_retention = \"soon\"\n").unwrap();
    let err = format!("{:#}", args(&[]).resolve().unwrap_err());
    assert!(
        err.contains("log_retention") && err.contains("hangar.toml"),
        "{err}"
    );
    std::fs::write(&file, "cpu_overcommit = -1.0\n").unwrap();
    let err = format!("{:#}", args(&[]).resolve().unwrap_err());
    assert!(err.contains("cpu_overcommit"), "{err}");
}

#[test]
fn auth_token() {
    assert!(matches!(
        parse(&["auth", "token"]).unwrap().command,
        Command::Auth(AuthCommand::Token)
    ));
}

#[test]
fn apps_commands() {
    assert_eq!(
        match parse(&["apps", "create", "web"]).unwrap().command {
            Command::Apps(c) => c,
            _ => panic!(),
        },
        AppsCommand::Create {
            name: "web".into(),
            org: "personal".into(),
            network: None
        }
    );
    assert_eq!(
        match parse(&["app", "create", "web", "--org", "acme", "--network", "n1"])
            .unwrap()
            .command
        {
            Command::Apps(c) => c,
            _ => panic!(),
        },
        AppsCommand::Create {
            name: "web".into(),
            org: "acme".into(),
            network: Some("n1".into())
        }
    );
    for argv in [
        &["apps", "list", "--json"][..],
        &["apps", "ls", "--json"][..],
    ] {
        assert_eq!(
            match parse(argv).unwrap().command {
                Command::Apps(c) => c,
                _ => panic!(),
            },
            AppsCommand::List {
                org: "personal".into(),
                json: true
            }
        );
    }
    assert_eq!(
        match parse(&["apps", "destroy", "web", "-y", "--force"])
            .unwrap()
            .command
        {
            Command::Apps(c) => c,
            _ => panic!(),
        },
        AppsCommand::Destroy {
            name: "web".into(),
            yes: true,
            force: true
        }
    );
    let err = parse(&["apps", "create"]).unwrap_err();
    assert!(one_line_clap_error(&err).contains("<NAME>"), "{err}");
}

#[test]
fn machine_list() {
    let m = machine(&["list", "-a", "web"]);
    assert_eq!(
        m.app,
        AppArgs {
            app: Some("web".into()),
            config: None
        }
    );
    assert_eq!(m.command, MachineCommand::List(ListArgs::default()));

    // Alias `m`, `ls`, global -a before the subcommand.
    let Command::Machine(m) = parse(&[
        "m",
        "-a",
        "web",
        "ls",
        "-q",
        "--state",
        "started,stopped",
        "--include-deleted",
        "--json",
    ])
    .unwrap()
    .command
    else {
        panic!()
    };
    assert_eq!(m.app.app.as_deref(), Some("web"));
    assert_eq!(
        m.command,
        MachineCommand::List(ListArgs {
            quiet: true,
            json: true,
            state: Some("started,stopped".into()),
            include_deleted: true
        })
    );
}

#[test]
fn machine_status() {
    assert_eq!(
        machine(&["status"]).command,
        MachineCommand::Status(StatusArgs::default())
    );
    assert_eq!(
        machine(&["status", "abc", "-d"]).command,
        MachineCommand::Status(StatusArgs {
            id: Some("abc".into()),
            display_config: true,
            json: false
        })
    );
    assert_eq!(
        machine(&["status", "abc", "--json", "-c", "other.toml"]),
        MachineArgs {
            app: AppArgs {
                app: None,
                config: Some("other.toml".into())
            },
            command: MachineCommand::Status(StatusArgs {
                id: Some("abc".into()),
                display_config: false,
                json: true
            })
        }
    );
}

#[test]
fn machine_destroy() {
    for alias in ["destroy", "rm", "remove"] {
        assert_eq!(
            machine(&[alias, "a", "b", "-f"]).command,
            MachineCommand::Destroy(DestroyArgs {
                ids: ids(&["a", "b"]),
                force: true,
                ..Default::default()
            })
        );
    }
    assert_eq!(
        machine(&["destroy"]).command,
        MachineCommand::Destroy(DestroyArgs::default())
    );
}

#[test]
fn go_style_booleans_and_repeated_flags() {
    // `--json=false` is dropped, `--json=true` is the bare flag; the last of two values wins.
    let m = machine(&["list", "--json=false"]);
    assert!(matches!(
        m.command,
        MachineCommand::List(ListArgs { json: false, .. })
    ));
    let m = machine(&["list", "--json=true"]);
    assert!(matches!(
        m.command,
        MachineCommand::List(ListArgs { json: true, .. })
    ));
    assert!(parse(&["machine", "list", "--json=perhaps"]).is_err());
    let m = machine(&["stop", "abc", "--timeout", "5", "--timeout", "9"]);
    assert!(
        matches!(
            m.command,
            MachineCommand::Stop(StopArgs {
                timeout: Some(9),
                ..
            })
        ),
        "{m:?}"
    );
    // The last value wins for booleans too: `--json --json=false` is false.
    let m = machine(&["list", "--json", "--json=false"]);
    assert!(
        matches!(
            m.command,
            MachineCommand::List(ListArgs { json: false, .. })
        ),
        "{m:?}"
    );
    let m = machine(&["list", "-j", "--json=false"]);
    assert!(
        matches!(
            m.command,
            MachineCommand::List(ListArgs { json: false, .. })
        ),
        "{m:?}"
    );
    // Flag values are values, not subcommands: an app called `list`.
    let m = machine(&["-a", "list", "status", "abc", "--display-config=true"]);
    assert_eq!(m.app.app.as_deref(), Some("list"));
    assert!(
        matches!(
            m.command,
            MachineCommand::Status(StatusArgs {
                display_config: true,
                ..
            })
        ),
        "{m:?}"
    );
    let m = machine(&["-alist", "status", "abc"]);
    assert_eq!(m.app.app.as_deref(), Some("list"));
    // After `--` nothing is rewritten.
    let m = machine(&["exec", "abc", "--", "--json=false"]);
    assert!(
        matches!(&m.command, MachineCommand::Exec(e) if e.args == ids(&["abc", "--json=false"])),
        "{m:?}"
    );
    assert!(matches!(
        parse(&["machines", "list"]).unwrap().command,
        Command::Machine(_)
    ));
}

#[test]
fn machine_leases() {
    assert_eq!(
        machine(&["leases", "view"]).command,
        MachineCommand::Leases(LeasesCommand::View {
            ids: vec![],
            json: false
        })
    );
    assert_eq!(
        machine(&["lease", "view", "abc", "def", "--json"]).command,
        MachineCommand::Leases(LeasesCommand::View {
            ids: ids(&["abc", "def"]),
            json: true
        })
    );
    assert_eq!(
        machine(&["leases", "clear", "abc"]).command,
        MachineCommand::Leases(LeasesCommand::Clear { ids: ids(&["abc"]) })
    );
}

#[test]
fn machine_cordon_start() {
    let one = IdsArgs { ids: ids(&["abc"]) };
    assert_eq!(
        machine(&["cordon", "abc"]).command,
        MachineCommand::Cordon(one.clone())
    );
    assert_eq!(
        machine(&["uncordon", "abc"]).command,
        MachineCommand::Uncordon(one.clone())
    );
    assert_eq!(
        machine(&["start", "abc"]).command,
        MachineCommand::Start(one)
    );
    assert_eq!(
        machine(&["start"]).command,
        MachineCommand::Start(IdsArgs::default())
    );
}

#[test]
fn machine_stop() {
    assert_eq!(
        machine(&["stop", "abc", "-s", "term", "--timeout", "30"]).command,
        MachineCommand::Stop(StopArgs {
            ids: ids(&["abc"]),
            signal: Some(Signal::SIGTERM),
            timeout: Some(30),
            wait_timeout: None,
        })
    );
    let err = parse(&["m", "stop", "abc", "--signal", "SIGSEGV"]).unwrap_err();
    assert!(one_line_clap_error(&err).contains("--signal"), "{err}");
    let err = parse(&["m", "stop", "abc", "--timeout", "soon"]).unwrap_err();
    let line = one_line_clap_error(&err);
    assert!(line.contains("--timeout") && !line.contains('\n'), "{line}");
}

#[test]
fn machine_wait() {
    assert_eq!(
        machine(&["wait", "abc"]).command,
        MachineCommand::Wait(WaitArgs {
            id: Some("abc".into()),
            state: "settled".into(),
            wait_timeout: Duration::from_secs(300)
        })
    );
    assert_eq!(
        machine(&["wait", "--state", "started", "-w", "90s"]).command,
        MachineCommand::Wait(WaitArgs {
            id: None,
            state: "started".into(),
            wait_timeout: Duration::from_secs(90)
        })
    );
    let err = parse(&["m", "wait", "--state", "running"]).unwrap_err();
    assert!(one_line_clap_error(&err).contains("--state"), "{err}");
    let err = parse(&["m", "wait", "--wait-timeout", "later"]).unwrap_err();
    assert!(
        one_line_clap_error(&err).contains("--wait-timeout"),
        "{err}"
    );
}

#[test]
fn completion() {
    assert!(matches!(
        parse(&["completion", "zsh"]).unwrap().command,
        Command::Completion { shell: Shell::Zsh }
    ));
    assert!(parse(&["completion", "tcsh"]).is_err());
}

#[test]
fn unknown_flags_become_one_line() {
    let err = parse(&["m", "ls", "--bogus"]).unwrap_err();
    let line = one_line_clap_error(&err);
    assert!(line.contains("--bogus"), "{line}");
    assert!(!line.contains('\n') && !line.starts_with("error"), "{line}");
    assert!(parse(&["m", "ls", "--help"]).is_err()); // help is reported as an "error" kind
}
