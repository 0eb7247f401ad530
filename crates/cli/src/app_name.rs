//! Which app a command targets: `--app/-a`, then `FLY_APP`, then `HANGAR_APP`, then the
//! top-level `app = "..."` of `fly.toml` (or the file given with `--config/-c`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

/// The app-selection flags shared by the `machine` subcommands.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct AppArgs {
    /// App to operate on (default: $FLY_APP, $HANGAR_APP or `app` in ./fly.toml)
    #[arg(short = 'a', long = "app", global = true, value_name = "APP")]
    pub app: Option<String>,
    /// fly.toml to read the app name from (default: ./fly.toml)
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl AppArgs {
    /// Resolves the app from the flags, the process environment and the working directory.
    pub fn resolve(&self) -> Result<String> {
        resolve_app(self, |name| std::env::var(name).ok(), Path::new("fly.toml"))
    }
}

/// [`AppArgs::resolve`] with its environment made explicit, for tests.
pub fn resolve_app(
    args: &AppArgs,
    env: impl Fn(&str) -> Option<String>,
    default_config: &Path,
) -> Result<String> {
    let non_empty = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if let Some(app) = non_empty(args.app.clone()) {
        return Ok(app);
    }
    for var in ["FLY_APP", "HANGAR_APP"] {
        if let Some(app) = non_empty(env(var)) {
            return Ok(app);
        }
    }
    match &args.config {
        // An explicit --config must exist: silently ignoring a typo would pick the wrong app.
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config file {}", path.display()))?;
            match app_from_fly_toml(&text) {
                Some(app) => Ok(app),
                None => bail!(
                    "{} has no top-level `app = \"...\"`; pass --app/-a APP",
                    path.display()
                ),
            }
        }
        None => {
            // A missing or unreadable ./fly.toml just means "no default app"; one whose `app`
            // cannot be read is worth saying so.
            let from_file = match std::fs::read_to_string(default_config) {
                Ok(text) => fly_toml_app(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {e}; fix it or pass --app/-a APP",
                        default_config.display()
                    )
                })?,
                Err(_) => None,
            };
            match from_file {
                Some(app) => Ok(app),
                None => bail!(
                    "no app specified: pass --app/-a APP, set FLY_APP, or run in a directory whose fly.toml sets `app`"
                ),
            }
        }
    }
}

/// Reads the top-level `app` key of a fly.toml. Only what fly.toml files actually contain is
/// handled (a basic or literal string, optional trailing comment); anything under a `[table]`
/// header is not top-level and ends the search.
pub fn app_from_fly_toml(text: &str) -> Option<String> {
    fly_toml_app(text).ok().flatten()
}

/// Like [`app_from_fly_toml`], but an `app` key whose value cannot be read is an error rather
/// than no app.
pub fn fly_toml_app(text: &str) -> std::result::Result<Option<String>, String> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            return Ok(None);
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        if key != "app" {
            continue;
        }
        return match parse_toml_string(value.trim()).filter(|s| !s.is_empty()) {
            Some(app) => Ok(Some(app)),
            None => Err(format!("`{line}` is not an app name in quotes")),
        };
    }
    Ok(None)
}

fn parse_toml_string(value: &str) -> Option<String> {
    let mut chars = value.chars();
    match chars.next()? {
        '\'' => {
            let rest = chars.as_str();
            rest.find('\'').map(|end| rest[..end].to_string())
        }
        '"' => {
            let mut out = String::new();
            let mut escaped = false;
            for c in chars {
                match (escaped, c) {
                    (true, c) => {
                        out.push(match c {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => return Some(out),
                    (false, c) => out.push(c),
                }
            }
            None // unterminated
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_top_level_app() {
        let toml = r#"
# fly.toml app configuration file generated for demo
app = "demo-app"   # the name
primary_region = "ams"

[build]
  image = "nginx"
"#;
        assert_eq!(app_from_fly_toml(toml).as_deref(), Some("demo-app"));
        assert_eq!(app_from_fly_toml("app='lit'").as_deref(), Some("lit"));
        assert_eq!(app_from_fly_toml("\"app\" = \"q\"").as_deref(), Some("q"));
        assert_eq!(
            app_from_fly_toml("app = \"a\\\"b\"").as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn ignores_non_top_level_and_similar_keys() {
        assert_eq!(app_from_fly_toml("[env]\napp = \"nested\""), None);
        assert_eq!(
            app_from_fly_toml("application = \"x\"\napp_name = \"y\""),
            None
        );
        assert_eq!(app_from_fly_toml("app = \"\""), None);
        assert_eq!(app_from_fly_toml("app = \"unterminated"), None);
        assert_eq!(app_from_fly_toml("app = bare"), None);
        assert_eq!(app_from_fly_toml(""), None);
        // A present but unreadable `app` is an error for the default ./fly.toml.
        assert!(fly_toml_app("app = ").is_err());
        assert_eq!(fly_toml_app("primary_region = \"ord\""), Ok(None));
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("fly.toml");
        std::fs::write(&toml, "app = \n").unwrap();
        let err = resolve_app(&AppArgs::default(), |_| None, &toml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fly.toml") && err.contains("--app"), "{err}");
    }

    #[test]
    fn precedence_flag_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("fly.toml");
        std::fs::write(&toml, "app = \"from-file\"\n").unwrap();
        let env = |fly: Option<&'static str>, hangar: Option<&'static str>| {
            move |name: &str| match name {
                "FLY_APP" => fly.map(String::from),
                "HANGAR_APP" => hangar.map(String::from),
                _ => None,
            }
        };
        let flag = AppArgs {
            app: Some("from-flag".into()),
            config: None,
        };
        let none = AppArgs::default();
        assert_eq!(
            resolve_app(&flag, env(Some("f"), Some("h")), &toml).unwrap(),
            "from-flag"
        );
        assert_eq!(
            resolve_app(&none, env(Some("f"), Some("h")), &toml).unwrap(),
            "f"
        );
        assert_eq!(
            resolve_app(&none, env(None, Some("h")), &toml).unwrap(),
            "h"
        );
        assert_eq!(
            resolve_app(&none, env(None, None), &toml).unwrap(),
            "from-file"
        );

        let missing = dir.path().join("nope.toml");
        let err = resolve_app(&none, env(None, None), &missing).unwrap_err();
        assert!(err.to_string().contains("--app"), "{err}");

        let explicit_missing = AppArgs {
            app: None,
            config: Some(missing),
        };
        let err = resolve_app(&explicit_missing, env(None, None), &toml).unwrap_err();
        assert!(format!("{err:#}").contains("--config"), "{err:#}");
    }
}
