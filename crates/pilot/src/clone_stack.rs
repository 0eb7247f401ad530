//! The stack Pilot's cloned children (containers, exec sessions) start on.

use std::cell::RefCell;

/// Size of the stack; a child only runs its setup code on it before it execs.
const SIZE: usize = 1 << 20;

thread_local! {
    // Allocated once (a fresh mapping: its pages are not there until touched) and never
    // touched by Pilot itself. Each child is a copy of Pilot (no CLONE_VM), so a clone copies
    // no page of it and the child faults in only the few it uses. A zeroed 1 MiB `Vec` per
    // clone, once glibc served it from the heap, cost a memset and 256 page faults in Pilot
    // every time (~9% of Pilot's CPU in a loop of execs).
    static STACK: RefCell<Vec<u8>> = RefCell::new(vec![0u8; SIZE]);
}

/// Runs `clone` with the children's stack. Pilot is single-threaded; a clone never nests.
pub(crate) fn with_stack<R>(clone: impl FnOnce(&mut [u8]) -> R) -> R {
    STACK.with(|stack| clone(&mut stack.borrow_mut()))
}
