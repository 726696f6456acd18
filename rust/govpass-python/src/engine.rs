//! `govpass._core.Engine` and `Action`: a thin wrapper over the core engine.

use govpass_core::engine::Disposition;
use govpass_core::target::{choose_for_destination, Choice};
use govpass_core::{Action, Engine, FailReason};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::config::PyEngineConfig;
use crate::target::PyProfile;

pub const RELEASE: u8 = 0;
pub const DROP: u8 = 1;
pub const SEND: u8 = 2;
pub const ACCEPT: u8 = 3;

/// What the caller keeps for a held packet: its handle and original bytes.
type Token = (Py<PyAny>, Py<PyBytes>);

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
    engine: Engine<Token>,
    out: Vec<Action<Token>>,
}

fn micros(now: f64) -> u64 {
    if now.is_finite() && now > 0.0 {
        (now * 1e6) as u64
    } else {
        0
    }
}

impl PyEngine {
    fn convert(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PyAction>>> {
        let mut list = Vec::with_capacity(self.out.len());
        for action in self.out.drain(..) {
            let a = match action {
                Action::Release((handle, packet)) => PyAction {
                    kind: RELEASE,
                    handle,
                    packet,
                },
                Action::Drop((handle, packet)) => PyAction {
                    kind: DROP,
                    handle,
                    packet,
                },
                Action::Accept((handle, packet)) => PyAction {
                    kind: ACCEPT,
                    handle,
                    packet,
                },
                Action::Send(bytes) => PyAction {
                    kind: SEND,
                    handle: py.None(),
                    packet: PyBytes::new(py, &bytes).unbind(),
                },
            };
            list.push(Py::new(py, a)?);
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
            (h, packet.clone().unbind())
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

    /// Makes the next `process` call panic inside the engine (for tests of
    /// the recovery path).
    fn _arm_panic(&mut self) {
        self.engine.arm_panic();
    }
}
