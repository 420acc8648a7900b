//! Exit codes (and broker `ErrCode`s). Documented in the README; a caller
//! can rely on them to tell cases apart.

use ferry_core::ErrorKind;

/// Success.
pub const OK: i32 = 0;
/// The operation was attempted and failed.
pub const FAILED: i32 = 1;
/// Bad usage or input: unknown command or key, malformed value or file.
pub const USAGE: i32 = 2;
/// The named env, base or file does not exist (or a glob matched nothing).
pub const NOT_FOUND: i32 = 3;
/// The env's state does not allow the operation (already running, exists ...).
pub const WRONG_STATE: i32 = 4;
/// Another node owns the env.
pub const NOT_OWNER: i32 = 5;
/// Refused by a precheck before anything changed (unsafe hook, missing tool ...).
pub const REFUSED: i32 = 6;

/// The exit code for an error of this kind.
pub fn for_kind(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::Failed => FAILED,
        ErrorKind::BadInput => USAGE,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::WrongState => WRONG_STATE,
        ErrorKind::NotOwner => NOT_OWNER,
        ErrorKind::Refused => REFUSED,
    }
}

/// The table the README and `ferry help` show.
pub const TABLE: &[(i32, &str)] = &[
    (OK, "success"),
    (FAILED, "the operation failed"),
    (
        USAGE,
        "bad usage or input (unknown command or key, malformed value or file)",
    ),
    (NOT_FOUND, "no such env or base, or a glob matched nothing"),
    (
        WRONG_STATE,
        "the env's state does not allow it (running, stopped, exists)",
    ),
    (NOT_OWNER, "another node owns the env"),
    (REFUSED, "refused by a precheck before anything changed"),
];
