//! `govpass._core`: the Python face of the govpass engine. Everything here is
//! conversion; the behaviour lives in the `govpass-core` crate.

use pyo3::prelude::*;

mod bpf;
mod config;
mod engine;
mod error;
mod hello;
mod nfqueue;
mod quic;
mod target;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<config::PyEngineConfig>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyAction>()?;
    m.add_class::<target::PyHostList>()?;
    m.add_class::<target::PyIpSet>()?;
    m.add_class::<target::PyProfile>()?;
    m.add_class::<quic::PyQuicHeader>()?;
    m.add_class::<quic::PyCryptoStream>()?;
    m.add_function(wrap_pyfunction!(hello::client_hello_sni, m)?)?;
    m.add_function(wrap_pyfunction!(quic::quic_long_header, m)?)?;
    m.add_function(wrap_pyfunction!(quic::quic_initial_sni, m)?)?;
    m.add_function(wrap_pyfunction!(bpf::prefilter_load, m)?)?;
    m.add_function(wrap_pyfunction!(bpf::ksplit_load, m)?)?;
    m.add_function(wrap_pyfunction!(bpf::ksplit_attach, m)?)?;
    m.add_function(wrap_pyfunction!(bpf::ksplit_counters, m)?)?;
    m.add("RELEASE", engine::RELEASE)?;
    m.add("DROP", engine::DROP)?;
    m.add("SEND", engine::SEND)?;
    m.add("ACCEPT", engine::ACCEPT)?;
    m.add(
        "FAIL_REASONS",
        govpass_core::FailReason::ALL.map(|r| r.as_str()).to_vec(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
