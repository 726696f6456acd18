//! `govpass._core.EngineConfig`: the engine's settings as a typed, validated object.

use govpass_core::{EngineConfig, SplitMode, SplitPos};
use pyo3::prelude::*;

use crate::error::{bad_value, config_error};

#[pyclass(name = "EngineConfig", module = "govpass._core", frozen)]
pub struct PyEngineConfig {
    pub inner: EngineConfig,
}

fn micros(field: &'static str, value: f64, scale: f64) -> PyResult<u64> {
    if !value.is_finite() || value < 0.0 {
        return Err(bad_value(field, value, "a finite, non-negative number"));
    }
    Ok((value * scale).round() as u64)
}

#[pymethods]
impl PyEngineConfig {
    #[new]
    #[pyo3(signature = (
        *,
        ports = vec![443],
        split_mode = "tls-hello".to_string(),
        split_chunk = 5,
        split_positions = Vec::new(),
        collect_timeout_ms = 250.0,
        max_buffer = 65536,
        max_held_pkts = 32,
        max_seg_payload = 1460,
        flow_timeout_s = 30.0,
        max_flows = 131072,
        auto_retrans = 3,
        auto_silence_s = 4.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ports: Vec<i64>,
        split_mode: String,
        split_chunk: i64,
        split_positions: Vec<String>,
        collect_timeout_ms: f64,
        max_buffer: i64,
        max_held_pkts: i64,
        max_seg_payload: i64,
        flow_timeout_s: f64,
        max_flows: i64,
        auto_retrans: i64,
        auto_silence_s: f64,
    ) -> PyResult<Self> {
        let port = |p: i64| {
            u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad_value("ports", p, "ports in 1..=65535"))
        };
        let int = |field: &'static str, v: i64| {
            u32::try_from(v).map_err(|_| bad_value(field, v, "a non-negative integer"))
        };
        let inner = EngineConfig {
            ports: ports.into_iter().map(port).collect::<PyResult<_>>()?,
            split_mode: split_mode.parse::<SplitMode>().map_err(config_error)?,
            split_chunk: int("split-chunk", split_chunk)?,
            split_positions: split_positions
                .iter()
                .map(|s| s.parse::<SplitPos>().map_err(config_error))
                .collect::<PyResult<_>>()?,
            collect_timeout_us: micros("collect-timeout", collect_timeout_ms, 1e3)?,
            max_buffer: int("max-buffer", max_buffer)?,
            max_held_pkts: int("max-held-pkts", max_held_pkts)?,
            max_seg_payload: int("max-seg-payload", max_seg_payload)?,
            flow_timeout_us: micros("flow-timeout", flow_timeout_s, 1e6)?,
            max_flows: int("max-flows", max_flows)?,
            auto_retrans: int("auto-retrans", auto_retrans)?,
            auto_silence_us: micros("auto-silence", auto_silence_s, 1e6)?,
        };
        inner.validate().map_err(config_error)?;
        Ok(PyEngineConfig { inner })
    }

    #[getter]
    fn ports(&self) -> Vec<u16> {
        self.inner.ports.clone()
    }
    #[getter]
    fn split_mode(&self) -> &'static str {
        self.inner.split_mode.as_str()
    }
    #[getter]
    fn split_chunk(&self) -> u32 {
        self.inner.split_chunk
    }
    #[getter]
    fn split_positions(&self) -> Vec<String> {
        self.inner
            .split_positions
            .iter()
            .map(ToString::to_string)
            .collect()
    }
    #[getter]
    fn collect_timeout_ms(&self) -> f64 {
        self.inner.collect_timeout_us as f64 / 1e3
    }
    #[getter]
    fn max_buffer(&self) -> u32 {
        self.inner.max_buffer
    }
    #[getter]
    fn max_held_pkts(&self) -> u32 {
        self.inner.max_held_pkts
    }
    #[getter]
    fn max_seg_payload(&self) -> u32 {
        self.inner.max_seg_payload
    }
    #[getter]
    fn flow_timeout_s(&self) -> f64 {
        self.inner.flow_timeout_us as f64 / 1e6
    }
    #[getter]
    fn max_flows(&self) -> u32 {
        self.inner.max_flows
    }
    #[getter]
    fn auto_retrans(&self) -> u32 {
        self.inner.auto_retrans
    }
    #[getter]
    fn auto_silence_s(&self) -> f64 {
        self.inner.auto_silence_us as f64 / 1e6
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "EngineConfig(ports={:?}, split_mode={:?}, split_chunk={}, split_positions={:?}, \
             collect_timeout_ms={}, max_buffer={}, max_held_pkts={}, max_seg_payload={}, \
             flow_timeout_s={}, max_flows={})",
            c.ports,
            c.split_mode.as_str(),
            c.split_chunk,
            self.split_positions(),
            self.collect_timeout_ms(),
            c.max_buffer,
            c.max_held_pkts,
            c.max_seg_payload,
            self.flow_timeout_s(),
            c.max_flows
        )
    }
}
