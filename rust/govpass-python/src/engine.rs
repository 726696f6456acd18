//! `govpass._core.Engine` and `Action`: a thin wrapper over the core engine.

use govpass_core::engine::Disposition;
use govpass_core::targeting::{choose_for_destination, Choice};
use govpass_core::{Action, Engine, FailReason};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::config::PyEngineConfig;
use crate::target::PyProfile;

pub const RELEASE: u8 = 0;
pub const DROP: u8 = 1;
pub const SEND: u8 = 2;
pub const ACCEPT: u8 = 3;

/// What the engine keeps for a held packet: the Python caller's handle and
/// original bytes, or, when the Rust NFQUEUE loop drives the engine
/// ([`crate::nfqueue`]), the queue's packet id and the mark it carried.
pub enum Token {
    Py(Py<PyAny>, Py<PyBytes>),
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Queued(u32, u32),
}

impl govpass_nfq::QueuedPacket for Token {
    fn queued(&self) -> Option<(u32, u32)> {
        match self {
            Token::Queued(id, mark) => Some((*id, *mark)),
            Token::Py(..) => None,
        }
    }
}

/// One thing for the backend to do. `kind` is RELEASE, DROP, SEND or ACCEPT;
/// `handle` is the caller's handle (None for SEND); `packet` is the original
/// bytes for RELEASE/DROP/ACCEPT and the new packet for SEND. RELEASE and
/// ACCEPT both mean "send the original unchanged"; ACCEPT adds that the
/// flow is still being collected.
#[pyclass(name = "Action", module = "govpass._core", frozen, get_all)]
pub struct PyAction {
    kind: u8,
    handle: Py<PyAny>,
    packet: Py<PyBytes>,
}

#[pymethods]
impl PyAction {
    fn __repr__(&self, py: Python<'_>) -> String {
        let name = ["RELEASE", "DROP", "SEND", "ACCEPT"][usize::from(self.kind)];
        let len = self.packet.bind(py).as_bytes().len();
        format!(
            "Action({name}, handle={}, {len} bytes)",
            self.handle.bind(py)
        )
    }
}

#[pyclass(name = "Engine", module = "govpass._core")]
pub struct PyEngine {
    pub(crate) engine: Engine<Token>,
    pub(crate) out: Vec<Action<Token>>,
    /// Set by `nfq_attach`: the engine is then driven by the Rust loop.
    pub(crate) nfq: Option<crate::nfqueue::Attached>,
}

pub(crate) fn micros(now: f64) -> u64 {
    if now.is_finite() && now > 0.0 {
        (now * 1e6) as u64
    } else {
        0
    }
}

impl PyEngine {
    fn convert(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PyAction>>> {
        let mut list = Vec::with_capacity(self.out.len());
        if self.nfq.is_some() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "this engine is driven by its NFQUEUE loop: use the nfq_* methods",
            ));
        }
        for action in self.out.drain(..) {
            let (kind, token) = match action {
                Action::Release(t) => (RELEASE, t),
                Action::Drop(t) => (DROP, t),
                Action::Accept(t) => (ACCEPT, t),
                Action::Send(bytes) => {
                    let packet = PyBytes::new(py, &bytes).unbind();
                    let a = PyAction {
                        kind: SEND,
                        handle: py.None(),
                        packet,
                    };
                    list.push(Py::new(py, a)?);
                    continue;
                }
            };
            let (handle, packet) = match token {
                Token::Py(handle, packet) => (handle, packet),
                // Not reachable: queued tokens only exist with `nfq` set.
                Token::Queued(..) => (py.None(), PyBytes::new(py, b"").unbind()),
            };
            list.push(Py::new(
                py,
                PyAction {
                    kind,
                    handle,
                    packet,
                },
            )?);
        }
        Ok(list)
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (config = None))]
    fn new(config: Option<PyRef<'_, PyEngineConfig>>) -> PyResult<Self> {
        let cfg = config.map(|c| c.inner.clone()).unwrap_or_default();
        let engine = Engine::new(cfg).map_err(crate::error::config_error)?;
        Ok(PyEngine {
            engine,
            out: Vec::new(),
            nfq: None,
        })
    }

    /// Feeds one packet. Returns None when it passes unmodified at once;
    /// otherwise a list of actions (the engine then owns the packet).
    #[pyo3(signature = (packet, now, handle = None, iface = 0))]
    fn process(
        &mut self,
        py: Python<'_>,
        packet: Bound<'_, PyBytes>,
        now: f64,
        handle: Option<Bound<'_, PyAny>>,
        iface: u32,
    ) -> PyResult<Option<Vec<Py<PyAction>>>> {
        let bytes = packet.as_bytes();
        let token = || {
            let h = handle
                .as_ref()
                .map_or_else(|| py.None(), |h| h.clone().unbind());
            Token::Py(h, packet.clone().unbind())
        };
        match self
            .engine
            .process_on(bytes, micros(now), iface, token, &mut self.out)
        {
            Disposition::Pass => Ok(None),
            Disposition::Taken => self.convert(py).map(Some),
        }
    }

    /// Replaces the targeting profiles (ordered, first match wins).
    fn set_profiles(&mut self, py: Python<'_>, profiles: Vec<Py<PyProfile>>) -> PyResult<()> {
        let list = profiles
            .iter()
            .map(|p| p.bind(py).get().inner.clone())
            .collect();
        self.engine
            .set_profiles(list)
            .map_err(crate::error::config_error)
    }

    /// What a TCP flow to `dst`:`dport` (on interface index `iface`) whose
    /// ClientHello names `host` would get from the profiles: "split",
    /// "pass" or "watch". For traffic the engine does not track, e.g. QUIC.
    #[pyo3(signature = (host, dst, dport, iface = 0))]
    fn choose(
        &self,
        host: Option<&str>,
        dst: &str,
        dport: u16,
        iface: u32,
    ) -> PyResult<&'static str> {
        let addr: std::net::IpAddr = dst.parse().map_err(|_| {
            pyo3::exceptions::PyValueError::new_err(format!("not an IP address: {dst:?}"))
        })?;
        let host = host.map(str::as_bytes);
        Ok(
            match choose_for_destination(self.engine.profiles(), addr, dport, iface, host) {
                Choice::Split(_) => "split",
                Choice::Pass => "pass",
                Choice::Watch(_) => "watch",
            },
        )
    }

    /// Names of the profiles in use, in order.
    fn profile_names(&self) -> Vec<String> {
        self.engine
            .profiles()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    /// Auto-learning verdicts since the last call: (profile, host, failed).
    fn take_events(&mut self) -> Vec<(String, String, bool)> {
        self.engine
            .take_events()
            .into_iter()
            .map(|e| (e.profile, e.host, e.failed))
            .collect()
    }

    /// Timer call: actions for flows whose collect-timeout passed.
    fn expire(&mut self, py: Python<'_>, now: f64) -> PyResult<Vec<Py<PyAction>>> {
        self.engine.expire(micros(now), &mut self.out);
        self.convert(py)
    }

    /// Releases every held packet and forgets all flows (for shutdown).
    fn release_all(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PyAction>>> {
        self.engine.release_all(&mut self.out);
        self.convert(py)
    }

    #[getter]
    fn config(&self) -> PyEngineConfig {
        PyEngineConfig {
            inner: self.engine.config().clone(),
        }
    }

    /// Counters and gauges, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.engine.stats();
        let d = PyDict::new(py);
        d.set_item("packets", s.packets)?;
        d.set_item("passed", s.passed)?;
        d.set_item("flows", s.flows)?;
        d.set_item("flows_now", s.flows_now)?;
        d.set_item("splits", s.splits)?;
        d.set_item("resplits", s.resplits)?;
        d.set_item("segments", s.segments)?;
        d.set_item("evicted", s.evicted)?;
        d.set_item("profile_pass", s.profile_pass)?;
        d.set_item("watched", s.watched)?;
        d.set_item("auto_failures", s.auto_failures)?;
        d.set_item("auto_successes", s.auto_successes)?;
        d.set_item("auto_silent", s.auto_silent)?;
        d.set_item("held_packets_now", s.held_packets_now)?;
        d.set_item("held_bytes_now", s.held_bytes_now)?;
        d.set_item("held_packets_peak", s.held_packets_peak)?;
        d.set_item("held_bytes_peak", s.held_bytes_peak)?;
        let fails = PyDict::new(py);
        for reason in FailReason::ALL {
            fails.set_item(reason.as_str(), s.fail_count(reason))?;
        }
        d.set_item("fail_open", fails)?;
        Ok(d)
    }

    /// Packets held right now (the loop's timer only has work while some are).
    #[getter]
    fn held_packets(&self) -> u64 {
        self.engine.stats().held_packets_now
    }

    /// Hands the NFQUEUE socket `fd` (of queue `queue`, bound by the caller)
    /// to the Rust packet loop: from now on `nfq_run`, `nfq_expire` and
    /// `nfq_release_all` drive the engine, giving verdicts over `fd` (releases
    /// carry `mark`) and sending segments through the raw sockets `raw4` and
    /// `raw6` (which must carry the mark already). With `in_verdicts`, a
    /// split's last segments leave in the verdicts of the packets they
    /// replace (NF_ACCEPT with new bytes) instead of through a raw socket.
    /// The caller keeps every descriptor open while the engine uses them.
    #[pyo3(signature = (fd, queue, mark, raw4, raw6 = None, in_verdicts = false))]
    fn nfq_attach(
        &mut self,
        fd: i32,
        queue: u16,
        mark: u32,
        raw4: i32,
        raw6: Option<i32>,
        in_verdicts: bool,
    ) -> PyResult<()> {
        if self.engine.stats().held_packets_now > 0 {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "cannot attach an NFQUEUE socket while packets are held",
            ));
        }
        self.nfq = Some(crate::nfqueue::attach(govpass_nfq::Setup {
            fd,
            queue,
            mark,
            raw4,
            raw6,
            in_verdicts,
        })?);
        Ok(())
    }

    /// Waits up to `timeout` seconds for queued packets and handles all that
    /// are there; returns how many packets it read. Returns early when a
    /// packet is held and none was at the call (the caller's timer then
    /// follows the collect timeout).
    fn nfq_run(&mut self, py: Python<'_>, timeout: f64) -> PyResult<usize> {
        crate::nfqueue::run(self, py, timeout)
    }

    /// Timer call of the loop: gives the verdicts of flows whose
    /// collect-timeout passed.
    fn nfq_expire(&mut self, now: f64) -> PyResult<()> {
        crate::nfqueue::expire(self, now)
    }

    /// Releases every held packet (verdicts sent) and forgets all flows.
    fn nfq_release_all(&mut self) -> PyResult<()> {
        crate::nfqueue::release_all(self)
    }

    /// The loop's counters: inject_sent, inject_errors, verdict_sent,
    /// verdict_errors.
    fn nfq_counters<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        crate::nfqueue::counters(self, py)
    }

    /// Makes the next `process` call panic inside the engine (for tests of
    /// the recovery path).
    fn _arm_panic(&mut self) {
        self.engine.arm_panic();
    }
}
