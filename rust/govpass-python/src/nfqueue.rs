//! The `nfq_*` methods of `Engine`: hand a bound NFQUEUE socket to the Rust
//! loop of `govpass-nfq`. Linux only; elsewhere they raise `BackendError`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::engine::{micros, PyEngine};

#[cfg(target_os = "linux")]
pub struct Attached(govpass_nfq::Loop);

#[cfg(not(target_os = "linux"))]
pub struct Attached;

#[cfg(target_os = "linux")]
fn monotonic_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC is what Python's time.monotonic() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(target_os = "linux")]
pub fn attach(setup: govpass_nfq::Setup) -> PyResult<Attached> {
    govpass_nfq::Loop::new(setup)
        .map(Attached)
        .map_err(|e| crate::error::backend_error("fcntl on the NFQUEUE socket", e))
}

#[cfg(not(target_os = "linux"))]
pub fn attach(_: govpass_nfq::Setup) -> PyResult<Attached> {
    Err(crate::error::BackendError::new_err(
        "the NFQUEUE loop exists on Linux only",
    ))
}

fn attached(engine: &mut PyEngine) -> PyResult<&mut Attached> {
    engine.nfq.as_mut().ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err("no NFQUEUE socket attached (nfq_attach)")
    })
}

/// Handles queued packets as they come until `timeout` seconds have passed
/// (or a signal arrives, so that Python can act on it); returns how many it
/// read. One call covers many packets: Python runs only between calls.
#[cfg(target_os = "linux")]
pub fn run(engine: &mut PyEngine, py: Python<'_>, timeout: f64) -> PyResult<usize> {
    use govpass_nfq::Received;
    use std::time::Duration;

    attached(engine)?;
    let PyEngine { engine, out, nfq } = &mut *engine;
    let lp = &mut nfq.as_mut().expect("attached above").0;
    let deadline = monotonic_seconds() + timeout.max(0.0);
    let mut total = 0;
    // Called with the idle timer (nothing held), it returns as soon as a packet is
    // held, so that the caller's timer shortens to the collect timeout's pace.
    let idle = engine.stats().held_packets_now == 0;
    let result = loop {
        let left = (deadline - monotonic_seconds()).max(0.0);
        // The wait and the read are one system call, without the GIL.
        let wait = Duration::from_secs_f64(left.min(3600.0));
        match py.detach(|| lp.receive(wait)) {
            Err(e) => break Err(crate::error::backend_error("recv on the NFQUEUE socket", e)),
            Ok(Received::Timeout | Received::Interrupted) => break Ok(total),
            Ok(Received::Datagrams(_)) => {}
        }
        let now = micros(monotonic_seconds());
        total += lp.handle(engine, now, crate::engine::Token::Queued, out);
        if left <= 0.0 || (idle && engine.stats().held_packets_now > 0) {
            break Ok(total);
        }
    };
    lp.end_wait();
    result
}

#[cfg(not(target_os = "linux"))]
pub fn run(engine: &mut PyEngine, _: Python<'_>, _: f64) -> PyResult<usize> {
    attached(engine).map(|_| 0)
}

/// Applies what the engine put in `out` (timer or shutdown actions).
pub fn apply_out(engine: &mut PyEngine) -> PyResult<()> {
    let PyEngine { out, nfq, .. } = engine;
    let Some(attached) = nfq.as_mut() else {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(
            "no NFQUEUE socket attached (nfq_attach)",
        ));
    };
    #[cfg(target_os = "linux")]
    attached.0.apply(out);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = attached;
        out.clear();
    }
    Ok(())
}

pub fn expire(engine: &mut PyEngine, now: f64) -> PyResult<()> {
    attached(engine)?;
    engine.engine.expire(micros(now), &mut engine.out);
    apply_out(engine)
}

pub fn release_all(engine: &mut PyEngine) -> PyResult<()> {
    attached(engine)?;
    engine.engine.release_all(&mut engine.out);
    apply_out(engine)
}

/// The loop's own counters: segments sent (raw and in verdicts), errors.
pub fn counters<'py>(engine: &mut PyEngine, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    #[cfg(target_os = "linux")]
    {
        let c = attached(engine)?.0.counters();
        d.set_item("inject_sent", c.inject_sent)?;
        d.set_item("inject_errors", c.inject_errors)?;
        d.set_item("verdict_sent", c.verdict_sent)?;
        d.set_item("verdict_errors", c.verdict_errors)?;
    }
    #[cfg(not(target_os = "linux"))]
    attached(engine)?;
    Ok(d)
}
