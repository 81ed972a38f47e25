//! Checks the promise of `rules::kql`: evaluating a compiled query against a
//! normalized event does not allocate. A counting global allocator lives in
//! this test binary only, so it cannot disturb other tests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use firstseen::event::{NormalizedEvent, Outcome};
use firstseen::rules::kql::Query;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-local may already be gone while a thread exits.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

const SEED: &str = r#"data_stream.dataset:azure.activitylogs and event.action:("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/DELETE" or "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/READ" or "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/DELETE" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/READ" or "MICROSOFT.COMPUTE/VIRTUALMACHINESCALESETS/EXTENSIONS/WRITE") and event.outcome:(Success or success) and azure.resource.name:* and source.as.number:(* and not (3598 or 8068 or 8069 or 8070 or 8071 or 8072 or 8073 or 8074 or 8075 or 12076))"#;

#[test]
fn matching_a_normalized_event_does_not_allocate() {
    let queries = [
        Query::parse(SEED).unwrap(),
        Query::parse("azure.resource.name:*/EXTENSIONS/*SCRIPT* and not source.ip:(\"10.0.0.0/8\" or 192.0.2.1)")
            .unwrap(),
        Query::parse("user.name:(x or y) or message:*denied* or source.as.number:64500").unwrap(),
    ];
    let mut ev = NormalizedEvent {
        event_action: Some("MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE".into()),
        event_outcome: Some(Outcome::Success),
        resource_name: Some("VM1/EXTENSIONS/CUSTOMSCRIPT".into()),
        source_ip: Some("203.0.113.9".parse().unwrap()),
        source_as_number: Some(64500),
        ..Default::default()
    };
    // The counter itself works (otherwise the zero below would prove nothing).
    assert!(allocations_during(|| drop(std::hint::black_box(Box::new(1u64)))) >= 1);

    let mut results = Vec::with_capacity(8);
    let n = allocations_during(|| {
        for q in &queries {
            results.push(q.matches(&ev));
        }
    });
    assert_eq!(results, [true, true, true]);
    assert_eq!(n, 0, "Query::matches allocated {n} times");

    ev.source_as_number = Some(8075);
    let n = allocations_during(|| assert!(!queries[0].matches(&ev)));
    assert_eq!(n, 0);
}
