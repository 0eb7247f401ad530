//! What the API's validation accepts, said in the served schema.
//!
//! The wire types derive their schemas, which give types but not the rules `validate_config`
//! and the handlers apply: the words a field takes, ranges, name shapes, and rules that span
//! fields (an image or containers; `size` or `guest`; the guest sizes a cpu kind allows; the
//! host's region). A generated SDK or a fuzzer that follows the schema should send requests the
//! API accepts, so those rules are written here, from the same constants validation uses, onto
//! the derived document. Where a rule cannot be said in JSON Schema (a secret or volume must
//! exist, `depends_on` names another container), the schema stays looser than the API.

use serde_json::{json, Map, Value};

use hangar_api::guest::{limits, PRESETS};
use hangar_api::signal::STOP_SIGNALS;
use hangar_api::validate::{
    CONDITIONS, ENV_FROM_REFS, HANDLERS, MAX_ROOTFS_GB, RESTART_POLICIES, SCHEDULES,
};
use hangar_api::MachineState;

// Pieces of IMAGE (macros, so that `concat!` can join them at compile time): a port
// (0–65535), a host name label, a repository path component.
macro_rules! port {
    () => {
        r"([0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
    };
}
macro_rules! label {
    () => {
        r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
    };
}
macro_rules! component {
    () => {
        r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
    };
}
/// An image reference as `hangar_image::Reference::parse` reads it. A first component with a
/// dot, a port or `localhost` names a registry (a host name: no `_`); without one, the first
/// component is a repository name's, so it has no dot unless it is the only one.
const IMAGE: &str = concat!(
    // A registry (dotted host with an optional port, a host with a port, or localhost) and
    // a path; or a first component without a dot, then more; or one component alone.
    "((",
    label!(),
    r"((\.",
    label!(),
    ")+(:",
    port!(),
    ")?|:",
    port!(),
    ")|localhost)(/",
    component!(),
    ")+|[a-z0-9]+((_|__|-+)[a-z0-9]+)*(/",
    component!(),
    ")+|",
    component!(),
    r")(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?",
);
/// A name that is also a directory name: containers and machine-local volumes.
const DIR_SAFE: &str = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$";
const NO_NUL: &str = r"^[^\u0000]*$";
const ENV_NAME: &str = r"^[^=\u0000]+$";
const SECRET_NAME: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$";
/// An absolute path (with no `..` component: [`no_parent`]).
const ABS_PATH: &str = r"^/[^\u0000]*$";
/// A `..` component.
const PARENT: &str = r"(^|/)\.\.(/|$)";
const HTTP_PATH: &str = r"^(/[^\u0000]*)?$";
const METHOD: &str = r"^[A-Za-z]+$";
const HOSTNAME: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$";
const HOST_LABEL: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";
const BASE64: &str = r"^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";
const MACHINE_ID: &str = r"^[0-9a-f]{14}$";
/// White space as Rust's `char::is_whitespace` (Unicode's White_Space) sees it, which is
/// what validation trims and refuses; regex engines' `\s` differ from it and from each other
/// (U+0085, U+FEFF, U+001C–U+001F), so the schema spells the class out.
const SPACE: &str = r"\t\n\x0B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// A command line that splits into words as a POSIX shell (and the `shlex` crate) would: every
/// quote closed, no backslash left at the end. Not blank is said separately.
const SHELL_WORDS: &str = r#"^(?:[^"'\\]|\\[\s\S]|"(?:[^"\\]|\\[\s\S])*"|'[^']*')*$"#;
/// A stop's timeout (a stop request's, a restart's, a config's `stop_config`): a Go duration of
/// at most a day (longer is a 400), said as a subset that is always below it: one part of each
/// unit's size, or hours, minutes and seconds in the usual ranges (`1h30m`, `2m30s`).
const DAY_DURATION: &str = r"^(0|[0-9]{1,4}(\.[0-9]{1,9})?(ns|us|µs|μs|ms|s)|[0-9]{1,3}(\.[0-9]{1,9})?m|(1?[0-9]|2[0-3])(\.[0-9]{1,9})?h|(1?[0-9]|2[0-3])h([1-5]?[0-9]m)?([1-5]?[0-9](\.[0-9]{1,9})?s)?|[1-5]?[0-9]m[1-5]?[0-9](\.[0-9]{1,9})?s)$";
/// A reference no longer than a repository name may be (Docker's 255): so that no path
/// component is longer than the parser's 255 either, which a pattern cannot count.
const IMAGE_MAX_LEN: usize = 255;
/// A Go duration that comes to zero: every part zero once below a nanosecond is dropped, as
/// `parse_go_duration` (and Go) drop it (`0s`, `0.0001us`, `0.9ns`).
const ZERO_DURATION: &str = r"^[+]?(0|(0{1,5}(\.[0-9]{1,9})?ns|0{1,5}(\.(0{1,3}|0{3}[0-9]{1,6}))?(us|µs|μs)|0{1,5}(\.(0{1,6}|0{6}[0-9]{1,3}))?ms|0{1,5}(\.0{1,9})?(s|m|h)){1,4})$";
/// A ULID (event ids), as the `ulid` crate parses it: 26 Crockford base32 digits, the first at
/// most 7 (128 bits).
const ULID: &str = r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$";
/// Metadata keys: 1–255 characters, no control characters.
const METADATA_KEY: &str = r"^[^\u0000-\u001f\u007f-\u009f]{1,255}$";
const MACHINE_NAME: &str = r"^[A-Za-z0-9_-]{1,63}$";
const REGION: &str = r"^[a-z0-9-]{0,32}$";
/// A Go duration as `parse_go_duration` reads it (a subset: up to four parts, so it always
/// fits Go's int64 of nanoseconds).
const GO_DURATION: &str = r"^[+]?(0|([0-9]{1,5}(\.[0-9]{1,9})?(ns|us|µs|μs|ms|s|m|h)){1,4})$";

/// Writes the API's rules onto `doc` (the derived document as JSON). Returns the places it
/// expected and did not find, which a test keeps empty.
pub fn constrain(doc: &mut Value, host_region: &str, cluster: bool) -> Vec<String> {
    let mut p = Patcher {
        doc,
        missing: Vec::new(),
    };
    p.on("GoDuration", json!({ "pattern": GO_DURATION }));
    machine_config(&mut p);
    guest(&mut p);
    services_and_checks(&mut p);
    containers(&mut p);
    requests(&mut p, host_region, cluster);
    parameters(&mut p);
    p.missing
}

struct Patcher<'a> {
    doc: &'a mut Value,
    missing: Vec<String>,
}

impl Patcher<'_> {
    fn schema(&mut self, name: &str) -> Option<&mut Map<String, Value>> {
        let found = self
            .doc
            .pointer_mut(&format!("/components/schemas/{name}"))
            .and_then(Value::as_object_mut);
        if found.is_none() {
            self.missing.push(format!("schema {name}"));
        }
        found
    }

    /// Adds `patch`'s keywords to the whole schema `name`.
    fn on(&mut self, name: &str, patch: Value) {
        if let Some(s) = self.schema(name) {
            merge(s, patch);
        }
    }

    /// Adds `patch`'s keywords to property `prop` of schema `name`.
    fn prop(&mut self, name: &str, prop: &str, patch: Value) {
        let found = self
            .schema(name)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(prop))
            .and_then(Value::as_object_mut);
        match found {
            Some(s) => merge(s, patch),
            None => self.missing.push(format!("{name}.{prop}")),
        }
    }

    /// Restricts a string property to `words` (and null, where the property may be null).
    fn words<'w>(&mut self, name: &str, prop: &str, words: impl IntoIterator<Item = &'w str>) {
        let nullable = self
            .doc
            .pointer(&format!(
                "/components/schemas/{name}/properties/{prop}/type"
            ))
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t == "null"));
        let mut values: Vec<Value> = words.into_iter().map(Value::from).collect();
        if nullable {
            values.push(Value::Null);
        }
        self.prop(name, prop, json!({ "enum": values }));
    }

    /// Adds schema `to`, a copy of `from`.
    fn copy(&mut self, from: &str, to: &str) {
        if let Some(s) = self.schema(from).cloned() {
            if let Some(schemas) = self
                .doc
                .pointer_mut("/components/schemas")
                .and_then(Value::as_object_mut)
            {
                schemas.insert(to.to_string(), Value::Object(s));
            }
        }
    }

    /// Makes `method path` take a JSON body of schema `name`.
    fn body(&mut self, path: &str, method: &str, name: &str) {
        let pointer = format!(
            "/paths/{}/{method}/requestBody/content/application~1json/schema",
            path.replace('~', "~0").replace('/', "~1")
        );
        match self.doc.pointer_mut(&pointer) {
            Some(schema) => *schema = json!({ "$ref": format!("#/components/schemas/{name}") }),
            None => self.missing.push(format!("body of {method} {path}")),
        }
    }

    fn required(&mut self, name: &str, fields: &[&str]) {
        self.on(name, json!({ "required": fields }));
    }

    /// Marks the request body of `method path` required (the API answers 400 without one).
    fn body_required(&mut self, path: &str, method: &str) {
        let found = self
            .doc
            .pointer_mut(&format!(
                "/paths/{}/{method}/requestBody",
                path.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_object_mut);
        match found {
            Some(b) => {
                b.insert("required".into(), Value::Bool(true));
            }
            None => self
                .missing
                .push(format!("request body of {method} {path}")),
        }
    }

    /// The schema of parameter `param` of `method path`.
    fn param(&mut self, path: &str, method: &str, param: &str, schema: Value) {
        let found = self
            .doc
            .pointer_mut(&format!(
                "/paths/{}/{method}/parameters",
                path.replace('~', "~0").replace('/', "~1")
            ))
            .and_then(Value::as_array_mut)
            .and_then(|ps| ps.iter_mut().find(|p| p["name"] == param));
        match found {
            Some(p) => p["schema"] = schema,
            None => self
                .missing
                .push(format!("parameter {param} of {method} {path}")),
        }
    }
}

/// Sets `patch`'s keywords on `target`; a null in the patch removes the keyword (a derived
/// `oneOf` or `type` that a patch replaces).
fn merge(target: &mut Map<String, Value>, patch: Value) {
    if let Value::Object(patch) = patch {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(&k);
            } else {
                target.insert(k, v);
            }
        }
    }
}

/// `["", w1, w2…]`: validation reads an empty string as unset.
fn or_empty<'a>(words: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    std::iter::once("").chain(words.iter().copied())
}

/// An absolute path without a `..` component.
fn abs_path() -> Value {
    json!({ "pattern": ABS_PATH, "not": { "pattern": PARENT } })
}

fn argv() -> Value {
    json!({ "items": { "type": "string", "pattern": NO_NUL } })
}

fn env() -> Value {
    json!({
        "propertyNames": { "type": "string", "pattern": ENV_NAME },
        "additionalProperties": { "type": "string", "pattern": NO_NUL }
    })
}

fn port() -> Value {
    json!({ "minimum": 1, "maximum": 65535 })
}

fn machine_config(p: &mut Patcher) {
    let image_or_empty = format!("^({IMAGE})?$");
    p.prop(
        "MachineConfig",
        "image",
        json!({ "pattern": image_or_empty, "maxLength": IMAGE_MAX_LEN }),
    );
    p.on(
        "MachineConfig",
        json!({
            "anyOf": [
                { "required": ["image"], "properties": { "image": { "type": "string", "minLength": 1 } } },
                { "required": ["containers"], "properties": { "containers": { "type": "array", "minItems": 1 } } }
            ],
            "not": { "anyOf": [
                { "required": ["size", "guest"],
                  "properties": { "size": { "type": "string", "minLength": 1 }, "guest": { "type": "object" } } },
                { "required": ["processes", "containers"],
                  "properties": { "processes": { "type": "array", "minItems": 1 },
                                  "containers": { "type": "array", "minItems": 1 } } },
                { "required": ["standbys", "services"],
                  "properties": { "standbys": { "type": "array", "minItems": 1 },
                                  "services": { "type": "array", "minItems": 1 } } }
            ] }
        }),
    );
    p.prop("MachineConfig", "env", env());
    let sizes: Vec<&str> = PRESETS
        .iter()
        .filter(|s| s.gpu_kind.is_none())
        .map(|s| s.name)
        .collect();
    p.words("MachineConfig", "size", or_empty(&sizes));
    p.prop(
        "MachineConfig",
        "metadata",
        json!({ "propertyNames": { "type": "string", "minLength": 1 } }),
    );
    p.words("MachineConfig", "schedule", or_empty(SCHEDULES));
    p.prop("MachineConfig", "mounts", json!({ "maxItems": 1 }));
    p.prop(
        "MachineConfig",
        "standbys",
        json!({ "items": { "type": "string", "pattern": MACHINE_ID } }),
    );
    // Top-level checks need a port and may have a kind; service checks take no kind.
    p.prop(
        "MachineConfig",
        "checks",
        json!({
            "propertyNames": { "type": "string", "minLength": 1 },
            "additionalProperties": { "allOf": [
                { "$ref": "#/components/schemas/MachineCheck" },
                { "required": ["port"], "properties": { "port": { "type": "integer" } } }
            ] }
        }),
    );
    for field in ["exec", "entrypoint", "cmd"] {
        p.prop("MachineInit", field, argv());
    }
    p.prop(
        "MachineInit",
        "swap_size_mb",
        json!({ "minimum": 0, "maximum": 1 << 20 }),
    );
    p.words("MachineRestart", "policy", or_empty(RESTART_POLICIES));
    p.prop("MachineRestart", "max_retries", json!({ "minimum": 0 }));
    stop_signal(p, "StopConfig");
    p.words(
        "RootfsConfig",
        "persist",
        or_empty(&["never", "restart", "always"]),
    );
    p.prop(
        "RootfsConfig",
        "size_gb",
        json!({ "maximum": MAX_ROOTFS_GB }),
    );

    p.required("MachineMount", &["volume", "path"]);
    p.prop("MachineMount", "volume", json!({ "minLength": 1 }));
    // Absolute or relative (made absolute), never `/` itself, no `..`.
    p.prop(
        "MachineMount",
        "path",
        json!({ "pattern": r"^[^\u0000]+$",
                "not": { "anyOf": [{ "pattern": PARENT }, { "pattern": "^/+$" }] } }),
    );
    for (field, lo, hi) in [
        ("extend_threshold_percent", 1, 99),
        ("add_size_gb", 1, 500),
        ("add_size_percent", 1, 100),
        ("min_add_size_gb", 1, 500),
        ("size_gb_limit", 1, hangar_api::MAX_VOLUME_GB),
    ] {
        p.prop(
            "MachineMount",
            field,
            json!({ "minimum": lo, "maximum": hi }),
        );
    }
    // Auto-extend: a threshold with one increment (in GB or percent), or neither.
    let int = json!({ "type": "integer" });
    let unset = json!({ "type": "null" });
    p.on(
        "MachineMount",
        json!({ "anyOf": [
            { "properties": { "extend_threshold_percent": unset, "add_size_gb": unset,
                              "add_size_percent": unset } },
            { "required": ["extend_threshold_percent", "add_size_gb"],
              "properties": { "extend_threshold_percent": int, "add_size_gb": int,
                              "add_size_percent": unset } },
            { "required": ["extend_threshold_percent", "add_size_percent"],
              "properties": { "extend_threshold_percent": int, "add_size_percent": int,
                              "add_size_gb": unset } }
        ] }),
    );

    // A file has exactly one source.
    p.required("File", &["guest_path"]);
    p.prop(
        "File",
        "guest_path",
        json!({ "pattern": ABS_PATH,
                "not": { "anyOf": [{ "pattern": PARENT }, { "pattern": "/$" }] } }),
    );
    p.on(
        "File",
        json!({
            "oneOf": [
                { "required": ["raw_value"], "properties": { "raw_value": { "type": "string" } } },
                { "required": ["secret_name"], "properties": { "secret_name": { "type": "string" } } },
                { "required": ["image_config"], "properties": { "image_config": { "type": "string" } } }
            ],
            "not": { "required": ["guest_path"],
                     "properties": { "guest_path": { "pattern": "^/(proc|sys|dev)(/|$)" } } }
        }),
    );
    p.prop("File", "raw_value", json!({ "pattern": BASE64 }));
    p.prop("File", "secret_name", json!({ "pattern": SECRET_NAME }));
    p.prop("File", "mode", json!({ "maximum": 0o7777 }));

    p.prop(
        "DnsConfig",
        "nameservers",
        json!({ "items": { "type": "string", "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }] } }),
    );
    p.prop(
        "DnsConfig",
        "searches",
        json!({ "items": { "type": "string", "pattern": HOSTNAME } }),
    );
    p.prop(
        "DnsConfig",
        "hostname",
        json!({ "pattern": format!("^$|{HOST_LABEL}") }),
    );
    p.prop(
        "DnsConfig",
        "hostname_fqdn",
        json!({ "pattern": format!("^$|{HOSTNAME}") }),
    );
    p.required("DnsOption", &["name"]);
    let no_space_or_colon = format!("^[^{SPACE}:]+$");
    p.prop("DnsOption", "name", json!({ "pattern": no_space_or_colon }));
    p.prop(
        "DnsOption",
        "value",
        json!({ "pattern": no_space_or_colon }),
    );

    p.required("VolumeConfig", &["name"]);
    p.prop("VolumeConfig", "name", json!({ "pattern": DIR_SAFE }));
    p.words(
        "TempDirVolume",
        "storage_type",
        or_empty(&["disk", "memory"]),
    );
    p.prop(
        "TempDirVolume",
        "size_mb",
        json!({ "minimum": 0, "maximum": 1 << 20 }),
    );

    for field in ["exec", "entrypoint", "cmd"] {
        p.prop("MachineProcess", field, argv());
    }
    p.prop("MachineProcess", "env", env());
    p.prop(
        "MachineProcess",
        "user",
        json!({ "pattern": format!("[^{SPACE}]") }),
    );
    p.required("EnvFrom", &["env_var", "field_ref"]);
    p.prop("EnvFrom", "env_var", json!({ "pattern": ENV_NAME }));
    p.words("EnvFrom", "field_ref", ENV_FROM_REFS.iter().copied());
    p.required("MachineSecret", &["env_var"]);
    p.prop(
        "MachineSecret",
        "env_var",
        json!({ "pattern": SECRET_NAME }),
    );
    p.prop(
        "MachineSecret",
        "name",
        json!({ "pattern": format!("^$|{SECRET_NAME}") }),
    );
}

/// A stop's signal (the stop signals only) and grace period (at most a day).
fn stop_signal(p: &mut Patcher, schema: &str) {
    let mut signals: Vec<Value> = STOP_SIGNALS.iter().map(|s| Value::from(*s)).collect();
    signals.push(Value::Null);
    p.prop(schema, "signal", json!({ "oneOf": null, "enum": signals }));
    p.prop(
        schema,
        "timeout",
        json!({ "oneOf": null, "type": ["string", "null"], "pattern": DAY_DURATION }),
    );
}

/// A guest is one of the cpu counts its kind allows, with memory in that count's range and
/// step (0 takes the smallest). The kinds' table is the one validation uses.
fn guest(p: &mut Patcher) {
    let mut sizes = Vec::new();
    for kind in ["shared", "performance"] {
        let Some(lim) = limits(kind) else { continue };
        for &cpus in lim.cpus {
            let (min, max) = (lim.min_mb_per_cpu * cpus, lim.max_mb_per_cpu * cpus);
            let memory = json!({ "type": "integer", "anyOf": [
                { "const": 0 },
                { "minimum": min, "maximum": max, "multipleOf": lim.memory_step_mb }
            ] });
            // An unset kind is shared; an unset cpu count is one.
            let (kind_words, required): (Vec<&str>, Vec<&str>) = match (kind, cpus) {
                ("shared", 1) => (vec!["", "shared"], vec![]),
                ("shared", _) => (vec!["", "shared"], vec!["cpus"]),
                (_, 1) => (vec![kind], vec!["cpu_kind"]),
                _ => (vec![kind], vec!["cpu_kind", "cpus"]),
            };
            let cpu_values: Vec<i64> = if cpus == 1 { vec![0, 1] } else { vec![cpus] };
            sizes.push(json!({
                "required": required,
                "properties": {
                    "cpu_kind": { "enum": kind_words },
                    "cpus": { "enum": cpu_values },
                    "memory_mb": memory,
                    // At least memory_mb (which the schema cannot compare), at most the size's.
                    "max_memory_mb": { "anyOf": [
                        { "type": "null" }, { "const": 0 }, { "minimum": min, "maximum": max }
                    ] }
                }
            }));
        }
    }
    p.on(
        "MachineGuest",
        json!({
            "anyOf": sizes,
            "description": "cpus and memory_mb as a cpu kind allows them (shared: 1-8 cpus, \
                            256 MB steps, 256-2048 MB per cpu; performance: 1-128 cpus, \
                            1024 MB steps, 2048-8192 MB per cpu); max_memory_mb at least \
                            memory_mb. GPUs are not supported."
        }),
    );
    p.prop("MachineGuest", "gpus", json!({ "maximum": 0 }));
    p.prop("MachineGuest", "gpu_kind", json!({ "maxLength": 0 }));
    p.prop(
        "MachineGuest",
        "persist_rootfs",
        json!({ "type": null, "enum": [null, "", "none", "never", "restart", "always", 0, 1, 2, 3] }),
    );
}

fn services_and_checks(p: &mut Patcher) {
    p.required("MachineService", &["protocol", "internal_port"]);
    p.words("MachineService", "protocol", ["tcp", "udp"]);
    p.prop("MachineService", "internal_port", port());
    p.prop(
        "MachineService",
        "min_machines_running",
        json!({ "minimum": 0 }),
    );
    p.prop(
        "MachineService",
        "checks",
        json!({ "items": { "allOf": [
            { "$ref": "#/components/schemas/MachineCheck" },
            { "properties": { "kind": { "enum": [null, ""] } } }
        ] } }),
    );
    // A port is one port or a range.
    p.on(
        "MachinePort",
        json!({ "anyOf": [
            { "required": ["port"],
              "properties": { "port": { "type": "integer" },
                              "start_port": { "type": "null" }, "end_port": { "type": "null" } } },
            { "properties": { "port": { "type": "null" } },
              "anyOf": [
                  { "required": ["start_port"], "properties": { "start_port": { "type": "integer" } } },
                  { "required": ["end_port"], "properties": { "end_port": { "type": "integer" } } }
              ] }
        ] }),
    );
    p.prop("MachinePort", "port", port());
    p.prop(
        "MachinePort",
        "start_port",
        json!({ "minimum": 0, "maximum": 65535 }),
    );
    p.prop(
        "MachinePort",
        "end_port",
        json!({ "minimum": 0, "maximum": 65535 }),
    );
    p.prop(
        "MachinePort",
        "handlers",
        json!({ "items": { "type": "string", "enum": HANDLERS } }),
    );
    p.words(
        "Concurrency",
        "type",
        or_empty(&["connections", "requests"]),
    );
    p.prop("Concurrency", "soft_limit", json!({ "minimum": 0 }));
    p.prop("Concurrency", "hard_limit", json!({ "minimum": 0 }));

    p.required("MachineCheck", &["type"]);
    p.prop(
        "MachineCheck",
        "type",
        json!({ "type": "string", "enum": ["tcp", "http"] }),
    );
    p.prop("MachineCheck", "port", port());
    p.words(
        "MachineCheck",
        "kind",
        or_empty(&["informational", "readiness"]),
    );
    p.prop("MachineCheck", "path", json!({ "pattern": HTTP_PATH }));
    p.words("MachineCheck", "protocol", or_empty(&["http", "https"]));
    p.prop("MachineCheck", "method", json!({ "pattern": METHOD }));
    for field in ["interval", "timeout"] {
        p.prop(
            "MachineCheck",
            field,
            json!({ "oneOf": null, "anyOf": [
                { "type": "null" },
                { "$ref": "#/components/schemas/GoDuration", "not": { "pattern": ZERO_DURATION } }
            ] }),
        );
    }
}

fn containers(p: &mut Patcher) {
    p.required("ContainerConfig", &["name", "image"]);
    p.prop("ContainerConfig", "name", json!({ "pattern": DIR_SAFE }));
    p.prop(
        "ContainerConfig",
        "image",
        json!({ "pattern": format!("^{IMAGE}$"), "maxLength": IMAGE_MAX_LEN }),
    );
    for field in ["exec", "entrypoint", "cmd"] {
        p.prop("ContainerConfig", field, argv());
    }
    p.prop("ContainerConfig", "env", env());

    p.required("ContainerDependency", &["name", "condition"]);
    p.prop(
        "ContainerDependency",
        "name",
        json!({ "pattern": DIR_SAFE }),
    );
    p.words(
        "ContainerDependency",
        "condition",
        CONDITIONS.iter().copied(),
    );
    p.required("ContainerMount", &["name", "path"]);
    p.prop("ContainerMount", "path", abs_path());

    // A health check has exactly one of tcp, http or exec.
    p.on(
        "ContainerHealthcheck",
        json!({ "oneOf": [
            { "required": ["tcp"], "properties": { "tcp": { "type": "object" } } },
            { "required": ["http"], "properties": { "http": { "type": "object" } } },
            { "required": ["exec"], "properties": { "exec": { "type": "object" } } }
        ] }),
    );
    for field in ["interval", "timeout"] {
        p.prop(
            "ContainerHealthcheck",
            field,
            json!({ "minimum": 1, "maximum": 86_400 }),
        );
    }
    p.prop(
        "ContainerHealthcheck",
        "grace_period",
        json!({ "minimum": 0, "maximum": 86_400 }),
    );
    for field in ["success_threshold", "failure_threshold"] {
        p.prop(
            "ContainerHealthcheck",
            field,
            json!({ "minimum": 1, "maximum": 1_000_000 }),
        );
    }
    p.words(
        "ContainerHealthcheck",
        "kind",
        or_empty(&["readiness", "liveness"]),
    );
    p.words("ContainerHealthcheck", "unhealthy", or_empty(&["stop"]));
    p.required("TcpHealthcheck", &["port"]);
    p.prop("TcpHealthcheck", "port", port());
    p.required("HttpHealthcheck", &["port"]);
    p.prop("HttpHealthcheck", "port", port());
    p.words("HttpHealthcheck", "scheme", or_empty(&["http", "https"]));
    p.prop("HttpHealthcheck", "path", json!({ "pattern": HTTP_PATH }));
    p.prop("HttpHealthcheck", "method", json!({ "pattern": METHOD }));
    p.required("ExecHealthcheck", &["command"]);
    p.prop("ExecHealthcheck", "command", json!({ "minItems": 1 }));
}

fn requests(p: &mut Patcher, host_region: &str, cluster: bool) {
    p.prop(
        "CreateMachineRequest",
        "name",
        json!({ "pattern": MACHINE_NAME }),
    );
    p.prop(
        "CreateMachineRequest",
        "region",
        json!({ "pattern": REGION }),
    );
    p.prop(
        "CreateMachineRequest",
        "lease_ttl",
        json!({ "minimum": 1, "maximum": 86_400 }),
    );
    // Log-structured volume disks are Fly's; Hangar refuses `lsvd: true`.
    p.prop(
        "CreateMachineRequest",
        "lsvd",
        json!({ "type": null, "enum": [null, false] }),
    );
    p.on(
        "CreateMachineRequest",
        json!({ "examples": [{ "config": {
            "image": "busybox",
            "init": { "cmd": ["sleep", "60"] },
            "guest": { "cpu_kind": "shared", "cpus": 1, "memory_mb": 256 }
        } }] }),
    );
    // An update takes the same body, but keeps the machine's region and takes no lease.
    p.copy("CreateMachineRequest", "UpdateMachineRequest");
    p.prop(
        "UpdateMachineRequest",
        "lease_ttl",
        json!({ "enum": [null, 0], "minimum": null, "maximum": null }),
    );
    // On a single host every machine is in the host's region (none given means it); in a
    // cluster it is the machine's own host's, which only the machine says.
    if !cluster {
        p.words("UpdateMachineRequest", "region", ["", host_region]);
    }
    p.body(
        "/v1/apps/{app_name}/machines/{machine_id}",
        "post",
        "UpdateMachineRequest",
    );
    stop_signal(p, "StopRequest");
    p.prop("ExecRequest", "timeout", json!({ "minimum": 0 }));
    // A command: `command` (words), or `cmd` (one string split as a shell would, so not blank);
    // `container` names one of several containers, `machine: true` runs outside them, never
    // both.
    p.on(
        "ExecRequest",
        json!({
            "anyOf": [
                { "required": ["command"], "properties": { "command": { "type": "array", "minItems": 1 } } },
                { "required": ["cmd"], "properties": { "cmd": {
                    "type": "string", "allOf": [{ "pattern": format!("[^{SPACE}]") }, { "pattern": SHELL_WORDS }] } } }
            ],
            "not": {
                "required": ["container", "machine"],
                "properties": { "container": { "type": "string" }, "machine": { "const": true } }
            }
        }),
    );
    p.prop(
        "UpdateMetadataRequest",
        "metadata",
        json!({ "propertyNames": { "type": "string", "pattern": METADATA_KEY } }),
    );
    // `name` or its older spelling `app_name` (the same when both are given).
    p.on(
        "CreateAppRequest",
        json!({ "anyOf": [
            { "required": ["name"], "properties": { "name": { "type": "string", "minLength": 1 } } },
            { "required": ["app_name"], "properties": { "app_name": { "type": "string", "minLength": 1 } } }
        ] }),
    );
    p.on(
        "CreateAppRequest",
        json!({ "examples": [{ "app_name": "my-app", "org_slug": "personal" }] }),
    );
    p.required("CreateVolumeRequest", &["name"]);
    // `size_gb` defaults to 0, which no volume is: it must be given.
    p.required("ExtendVolumeRequest", &["size_gb"]);
    // A single host makes volumes in its own region only (none means it); a cluster places
    // them on a host of the region asked for.
    if !cluster {
        p.words("CreateVolumeRequest", "region", ["", host_region]);
    }
    p.prop(
        "CreateVolumeRequest",
        "encrypted",
        json!({ "enum": [null, false] }),
    );
    p.on(
        "CreateVolumeRequest",
        json!({ "not": {
            "required": ["snapshot_id", "source_volume_id"],
            "properties": { "snapshot_id": { "type": "string" }, "source_volume_id": { "type": "string" } }
        } }),
    );
    p.required(
        "ImportCertificateRequest",
        &["hostname", "fullchain", "private_key"],
    );
    p.prop(
        "ImportCertificateRequest",
        "fullchain",
        json!({ "pattern": "-----BEGIN CERTIFICATE-----" }),
    );
    p.prop(
        "ImportCertificateRequest",
        "private_key",
        json!({ "pattern": "-----BEGIN [A-Z ]*PRIVATE KEY-----" }),
    );
    p.required("AssignIpRequest", &["type"]);
    p.prop(
        "SetSecretsRequest",
        "values",
        json!({
            "minProperties": 1,
            "propertyNames": { "type": "string", "pattern": SECRET_NAME },
            "additionalProperties": { "type": ["string", "null"], "pattern": NO_NUL,
                                      "maxLength": hangar_api::secrets::MAX_VALUE_BYTES }
        }),
    );
}

fn parameters(p: &mut Patcher) {
    let machines = "/v1/apps/{app_name}/machines";
    let machine = "/v1/apps/{app_name}/machines/{machine_id}";
    let boolean = json!({ "type": "boolean" });
    for param in ["include_deleted", "include_leases", "summary"] {
        p.param(machines, "get", param, boolean.clone());
    }
    p.param(
        machines,
        "get",
        "region",
        json!({ "type": "string", "pattern": REGION }),
    );
    let states: Vec<&str> = MachineState::ALL.iter().map(|s| s.as_str()).collect();
    let state = format!("({})", states.join("|"));
    p.param(
        machines,
        "get",
        "state",
        json!({ "type": "string", "pattern": format!("^({state}(, *{state})*)?$") }),
    );
    for param in ["include_deleted", "include_leases"] {
        p.param(machine, "get", param, boolean.clone());
    }
    let lease = format!("{machine}/lease");
    p.param(
        &lease,
        "post",
        "ttl",
        json!({ "type": "integer", "minimum": 1, "maximum": 86_400 }),
    );
    p.param(
        &lease,
        "delete",
        hangar_api::LEASE_NONCE_HEADER,
        json!({ "type": "string", "minLength": 1 }),
    );
    // Seconds, or a Go duration, at most a day (longer is a 400).
    p.param(
        &format!("{machine}/restart"),
        "post",
        "timeout",
        json!({ "type": "string", "pattern": format!("^[0-9]{{1,4}}$|{DAY_DURATION}") }),
    );
    for param in ["force", "kill"] {
        p.param(machine, "delete", param, boolean.clone());
    }
    p.param("/v1/apps/{app_name}", "delete", "force", boolean.clone());
    // `wait`'s query: strings, never null (an absent parameter is how one is left out).
    let wait = format!("{machine}/wait");
    let wait_states = "(started|stopped|suspended|destroyed|failed|created|settled)";
    p.param(
        &wait,
        "get",
        "state",
        json!({ "type": "string", "pattern": format!("^{wait_states}(,{wait_states})*$") }),
    );
    p.param(
        &wait,
        "get",
        "timeout",
        json!({ "type": "string", "pattern": format!("^[0-9]{{1,5}}$|{GO_DURATION}") }),
    );
    for param in ["version", "instance_id"] {
        p.param(&wait, "get", param, json!({ "type": "string" }));
    }
    // An event id: a ULID.
    p.param(
        &wait,
        "get",
        "from_event_id",
        json!({ "type": "string", "pattern": ULID }),
    );
    p.body_required("/v1/apps/{app_name}/ip_assignments", "post");
    let key = json!({ "type": "string", "pattern": METADATA_KEY });
    let meta_key = format!("{machine}/metadata/{{key}}");
    for method in ["get", "post", "delete"] {
        p.param(&meta_key, method, "key", key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi;

    /// What the image pattern admits parses as a reference; references that name a registry
    /// the parser refuses are not admitted.
    #[test]
    fn image_pattern_admits_only_references_that_parse() {
        let re = regex::Regex::new(&format!("^({IMAGE})$")).expect("pattern");
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "a.b",
            "registry.fly.io/app:deployment-1",
            "127.0.0.1:5000/hangar/busybox:latest",
            "localhost/x",
            "myhost:5000/x",
            "my-registry.example.com:443/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "a__b/c.d_e",
        ] {
            assert!(re.is_match(ok), "{ok} should be admitted");
            assert!(hangar_image::Reference::parse(ok).is_ok(), "{ok} should parse");
        }
        for not in [
            "jccwyphnetg0g.q0ed0fqssu__s7gwk.ma/x",
            "a.b_c/x",
            "host:99999/x",
            "host:0x50/x",
            "myhost:5000:5000/x",
            "-a.b/x",
            "Upper",
            "a/",
        ] {
            assert!(!re.is_match(not), "{not} should not be admitted");
        }
    }

    /// The zero-duration pattern matches exactly the durations that parse to zero.
    #[test]
    fn zero_durations_are_those_that_parse_to_zero() {
        let zero = regex::Regex::new(ZERO_DURATION).expect("pattern");
        let any = regex::Regex::new(GO_DURATION).expect("pattern");
        for d in [
            "0",
            "0s",
            "+0s",
            "00h",
            "0.0s",
            "0h0m0s",
            "0.9ns",
            "0.0001us",
            "0.0009µs",
            "0.0000009ms",
            "1ns",
            "0.001us",
            "0.000001ms",
            "0.000000001s",
            "0.000000001m",
            "3.231us",
            "1h",
            "0.5ns0.5ns",
            "0.1s",
        ] {
            assert!(any.is_match(d), "{d} is a Go duration");
            let parsed = hangar_api::duration::parse_go_duration(d).expect("parses");
            assert_eq!(zero.is_match(d), parsed.is_zero(), "{d}: {parsed:?}");
        }
    }

    /// The white-space class is exactly what `char::is_whitespace` says.
    #[test]
    fn space_class_is_rusts_white_space() {
        let re = regex::Regex::new(&format!("^[{SPACE}]$")).expect("pattern");
        for c in (0..=0x3100u32)
            .filter_map(char::from_u32)
            .chain(['\u{FEFF}'])
        {
            assert_eq!(
                re.is_match(c.encode_utf8(&mut [0; 4])),
                c.is_whitespace(),
                "U+{:04X}",
                c as u32
            );
        }
    }

    /// The shell-words pattern admits exactly the command lines `shlex` splits.
    #[test]
    fn shell_words_pattern_agrees_with_shlex() {
        let re = regex::Regex::new(SHELL_WORDS).expect("pattern");
        for line in [
            "echo hi",
            r#"sh -c "echo \"quoted\"""#,
            "sh -c 'echo \"x'",
            r"echo a\ b",
            r#"echo "a\\" b"#,
            "echo 'unclosed",
            r#"echo "unclosed"#,
            r#"echo "escaped\""#,
            "echo trailing\\",
            "echo ''",
            "\u{60ad4}\"\u{101dd5}",
            "",
        ] {
            assert_eq!(
                re.is_match(line),
                shlex::split(line).is_some(),
                "{line:?}: pattern and shlex disagree"
            );
        }
    }

    /// What the day-bounded duration pattern admits parses, and is at most a day; the usual
    /// ways of writing a stop's timeout are admitted.
    #[test]
    fn day_durations_are_below_a_day() {
        let re = regex::Regex::new(DAY_DURATION).expect("pattern");
        let day = std::time::Duration::from_secs(24 * 3600);
        for ok in [
            "0",
            "0s",
            "30s",
            "90s",
            "500ms",
            "5m",
            "1m30s",
            "2m0.5s",
            "1h",
            "1h30m",
            "1h0m5s",
            "23h59m59.999s",
            "23.5h",
            "9999s",
            "999m",
        ] {
            assert!(re.is_match(ok), "{ok} should be admitted");
        }
        for too_long in [
            "24h", "25h", "24h1s", "1000m", "86400s", "99999h", "23h60m", "1d",
        ] {
            assert!(!re.is_match(too_long), "{too_long} should not be admitted");
        }
        // Every admitted composition of parts parses to at most a day.
        for h in ["", "0h", "9h", "19h", "23h", "23.999999999h"] {
            for m in ["", "0m", "59m", "999m", "59.9m"] {
                for s in ["", "0s", "59s", "59.999999999s", "9999s", "999ms"] {
                    let d = format!("{h}{m}{s}");
                    if !d.is_empty() && re.is_match(&d) {
                        let parsed = hangar_api::duration::parse_go_duration(&d)
                            .unwrap_or_else(|e| panic!("{d} admitted but refused: {e}"));
                        assert!(parsed <= day, "{d} admitted but longer than a day");
                    }
                }
            }
        }
    }

    #[test]
    fn every_rule_finds_its_place() {
        let mut doc = serde_json::to_value(crate::openapi::ApiDoc::openapi()).expect("json");
        let missing = constrain(&mut doc, "local", false);
        assert!(missing.is_empty(), "rules without a place: {missing:?}");
    }
}
