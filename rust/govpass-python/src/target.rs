//! `HostList`, `IpSet` and `Profile`: the targeting types of the core, for Python.

use std::net::IpAddr;
use std::sync::Arc;

use govpass_core::targeting::{Family, HostSet, IpSet, Profile, ProfileAction, Skipped, Strategy};
use govpass_core::SplitPos;
use pyo3::prelude::*;

use crate::error::{bad_value, config_error, list_error};

/// A host name list: entries match their subdomains unless written `^name`.
#[pyclass(name = "HostList", module = "govpass._core", frozen)]
pub struct PyHostList {
    pub inner: Arc<HostSet>,
    /// Lines `from_bytes(..., skip_invalid=True)` left out.
    skipped: Skipped,
}

#[pymethods]
impl PyHostList {
    /// The parse runs without the GIL: a worker's list thread building a large
    /// list must not stop its packet loop, which needs the GIL between waits.
    #[new]
    fn new(py: Python<'_>, lines: Vec<String>) -> PyResult<Self> {
        let set = py
            .detach(|| HostSet::parse(lines.iter().map(String::as_str)))
            .map_err(|e| list_error("hostlist", &e))?;
        Ok(PyHostList {
            inner: Arc::new(set),
            skipped: Skipped::default(),
        })
    }

    /// A list file's bytes, split into lines, checked and built without the
    /// GIL: a million names must not stop the packet loop of the worker whose
    /// list thread reads them. `skip_invalid`: lines that are not host names
    /// are left out and counted (`skipped`, `skipped_lines`) instead of
    /// raising.
    #[staticmethod]
    #[pyo3(signature = (data, *, skip_invalid = false))]
    fn from_bytes(py: Python<'_>, data: &[u8], skip_invalid: bool) -> PyResult<Self> {
        let mut skipped = Skipped::default();
        let set = py
            .detach(|| HostSet::from_bytes(data, skip_invalid.then_some(&mut skipped)))
            .map_err(|e| list_error("hostlist", &e))?;
        Ok(PyHostList {
            inner: Arc::new(set),
            skipped,
        })
    }

    /// How many lines `from_bytes(..., skip_invalid=True)` left out.
    #[getter]
    fn skipped(&self) -> usize {
        self.skipped.count
    }

    /// The first (at most five) of those line numbers.
    #[getter]
    fn skipped_lines(&self) -> Vec<usize> {
        self.skipped.first.clone()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, host: &str) -> bool {
        self.inner.contains(host.as_bytes())
    }
}

/// A set of IPv4/IPv6 addresses and prefixes.
#[pyclass(name = "IpSet", module = "govpass._core", frozen)]
pub struct PyIpSet {
    pub inner: Arc<IpSet>,
}

#[pymethods]
impl PyIpSet {
    /// Parsed without the GIL, like `HostList`.
    #[new]
    fn new(py: Python<'_>, lines: Vec<String>) -> PyResult<Self> {
        let set = py
            .detach(|| IpSet::parse(lines.iter().map(String::as_str)))
            .map_err(|e| list_error("ipset", &e))?;
        Ok(PyIpSet {
            inner: Arc::new(set),
        })
    }

    /// A list file's bytes, split, checked and built without the GIL.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let set = py
            .detach(|| IpSet::from_bytes(data))
            .map_err(|e| list_error("ipset", &e))?;
        Ok(PyIpSet {
            inner: Arc::new(set),
        })
    }

    /// Number of merged address ranges.
    fn __len__(&self) -> usize {
        self.inner.ranges()
    }

    fn __contains__(&self, addr: &str) -> PyResult<bool> {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| bad_value("ipset", format!("{addr:?}"), "an IPv4 or IPv6 address"))?;
        let (bytes, v6) = match ip {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, false)
            }
            IpAddr::V6(a) => (a.octets(), true),
        };
        Ok(self.inner.contains(&bytes, v6))
    }
}

/// One targeting profile: filters and an action (`split` or `pass`).
#[pyclass(name = "Profile", module = "govpass._core", frozen)]
pub struct PyProfile {
    pub inner: Profile,
}

fn sets<T, U>(items: Vec<Py<T>>, py: Python<'_>, get: impl Fn(&T) -> U) -> Vec<U>
where
    T: pyo3::PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync,
{
    items.iter().map(|i| get(i.bind(py).get())).collect()
}

#[pymethods]
impl PyProfile {
    #[new]
    #[pyo3(signature = (
        name,
        *,
        action = "split".to_string(),
        split_chunk = 5,
        split_positions = Vec::new(),
        hosts = Vec::new(),
        hosts_exclude = Vec::new(),
        ips = Vec::new(),
        ips_exclude = Vec::new(),
        ports = Vec::new(),
        family = None,
        ifaces = Vec::new(),
        auto = false,
        watch = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        action: String,
        split_chunk: i64,
        split_positions: Vec<String>,
        hosts: Vec<Py<PyHostList>>,
        hosts_exclude: Vec<Py<PyHostList>>,
        ips: Vec<Py<PyIpSet>>,
        ips_exclude: Vec<Py<PyIpSet>>,
        ports: Vec<i64>,
        family: Option<String>,
        ifaces: Vec<u32>,
        auto: bool,
        watch: bool,
    ) -> PyResult<Self> {
        let action = match action.as_str() {
            "pass" => ProfileAction::Pass,
            "split" => {
                let chunk = u32::try_from(split_chunk)
                    .map_err(|_| bad_value("split-chunk", split_chunk, "a non-negative integer"))?;
                let positions = split_positions
                    .iter()
                    .map(|s| s.parse::<SplitPos>().map_err(config_error))
                    .collect::<PyResult<Vec<_>>>()?;
                govpass_core::config::check_strategy(chunk, &positions).map_err(config_error)?;
                ProfileAction::Split(Strategy { chunk, positions })
            }
            other => return Err(bad_value("action", format!("{other:?}"), "split, pass")),
        };
        let family = match family.as_deref() {
            None | Some("any") => None,
            Some("ipv4") => Some(Family::V4),
            Some("ipv6") => Some(Family::V6),
            Some(other) => {
                return Err(bad_value("family", format!("{other:?}"), "any, ipv4, ipv6"))
            }
        };
        let ports = ports
            .into_iter()
            .map(|p| {
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad_value("ports", p, "ports in 1..=65535"))
            })
            .collect::<PyResult<Vec<u16>>>()?;
        let host_sets = |v: Vec<Py<PyHostList>>| sets(v, py, |h: &PyHostList| h.inner.clone());
        let ip_sets = |v: Vec<Py<PyIpSet>>| sets(v, py, |s: &PyIpSet| s.inner.clone());
        Ok(PyProfile {
            inner: Profile {
                name,
                action,
                hosts: host_sets(hosts),
                hosts_exclude: host_sets(hosts_exclude),
                ips: ip_sets(ips),
                ips_exclude: ip_sets(ips_exclude),
                ports,
                family,
                ifaces,
                auto,
                watch,
            },
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }

    #[getter]
    fn action(&self) -> &'static str {
        match self.inner.action {
            ProfileAction::Split(_) => "split",
            ProfileAction::Pass => "pass",
        }
    }

    #[getter]
    fn auto(&self) -> bool {
        self.inner.auto
    }

    #[getter]
    fn watch(&self) -> bool {
        self.inner.watch
    }

    fn __repr__(&self) -> String {
        format!("Profile({:?}, action={:?})", self.inner.name, self.action())
    }
}
