"""A schemathesis check for the operations scripts/fuzz-api leaves out of the validation-mismatch
warning: a request the schema allows may still be refused there, but only for what no schema
can say (a state, an existing resource, the host's disk, or a rule between two fields that
JSON Schema cannot compare). Any other refusal of a valid request is the schema allowing what
validation refuses, and fails the run.

Loaded with SCHEMATHESIS_HOOKS=fuzz_checks (scripts/ on PYTHONPATH)."""

import os
import re

import schemathesis
from schemathesis.generation import GenerationMode

# The operations fuzz-api exempts from the warning, space-separated in the environment.
EXEMPT = set(os.environ.get("HANGAR_FUZZ_EXEMPT", "").split())

# Refusals of valid requests that depend on what exists or on a state, by message. Each is a
# documented answer of the API (the status is checked too: a 400 must be one of these words).
STATE_OR_EXISTENCE = [
    # --pull never: a generated image reference names nothing in the store.
    r"image .* is not in this host's store, and this daemon does not pull \(--pull never\)",
    # A resource named by a field (a volume, a snapshot, a secret, a machine version).
    r"\bnot found\b",
    r"app \S+ has no secret named",
    r"^version .* is not a version of machine",
    r"volumes only grow",
    # Bounded by the machine's own config (its guest memory), not by the request.
    r"^limit_mb must be between \d+ and \d+ \(the machine's memory\)",
    # The host's disk (volumes are promised space up front).
    r"^insufficient storage: ",
    # Lifecycle preconditions (Fly's 412s carry failed_precondition).
    r"^failed_precondition: ",
    r"^unable to \w+ machine from state",
    r"still has running machines",
    # Names taken by the fuzzer's own earlier requests.
    r"already taken",
    r"already (exists|in use)",
]
# Rules between fields, which JSON Schema cannot say: names unique by a property across an
# array's items (its uniqueItems compares whole items), references to another item, cycles,
# and comparisons of two fields.
BETWEEN_FIELDS = [
    r"\bduplicate [\w ]+ name\b",
    r"depends on (unknown container|itself)",
    r"mounts unknown volume",
    r"^dependency cycle: ",
    r"max_memory_mb must not be below memory_mb",
    r"max_memory_mb must be at most \d+ MB for this size",
    r"soft_limit must not exceed hard_limit",
]
STATE_RE = re.compile("|".join(f"(?:{p})" for p in STATE_OR_EXISTENCE + BETWEEN_FIELDS))

# A range whose start is above its end (two fields compared).
REVERSED_RANGE = re.compile(r"invalid port range (\d+)-(\d+)$")


def _unschemable(message):
    if STATE_RE.search(message):
        return True
    reversed_range = REVERSED_RANGE.search(message)
    return bool(reversed_range) and int(reversed_range[1]) > int(reversed_range[2])


def _error_of(response):
    try:
        body = response.json()
    except Exception:
        return response.text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return response.text


@schemathesis.check
def refused_only_for_state(ctx, response, case):
    """A valid request to an exempt operation is refused only for a state or existence."""
    if case.operation.definition.raw.get("operationId") not in EXEMPT:
        return None
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE:
        return None
    if response.status_code not in (400, 412, 422):
        return None
    message = _error_of(response)
    if response.status_code == 412 or _unschemable(message):
        return None
    raise AssertionError(
        f"a request the schema allows was refused ({response.status_code}) for a reason "
        f"that is not a state or existence: {message}"
    )
