//! `quic_long_header`, `QuicHeader`, `CryptoStream` and `quic_initial_sni`:
//! the core's QUIC Initial reading (`govpass_core::quic`) for the
//! `--block-quic listed` filter in `govpass.quic`, which keeps the
//! connection table and the verdicts.

use govpass_core::quic::{self, CryptoStream, LongHeader};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::hello::server_name_tuple;

/// The unprotected part of the long header at the start of a UDP payload.
#[pyclass(name = "QuicHeader", module = "govpass._core", frozen)]
pub struct PyQuicHeader {
    datagram: Py<PyBytes>,
    version: u32,
    dcid: Py<PyBytes>,
    kind: Option<&'static str>,
}

#[pymethods]
impl PyQuicHeader {
    #[getter]
    fn version(&self) -> u32 {
        self.version
    }

    #[getter]
    fn dcid(&self, py: Python<'_>) -> Py<PyBytes> {
        self.dcid.clone_ref(py)
    }

    /// "initial", "0rtt", "handshake", "retry"; None for an unknown version.
    #[getter]
    fn kind(&self) -> Option<&'static str> {
        self.kind
    }

    /// `(offset, data)` of every CRYPTO frame of this Initial and of the
    /// Initials of the same connection coalesced after it, in packet order;
    /// or, when the first packet gives none, the reason as a str.
    fn initial_frames<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let datagram = self.datagram.bind(py).as_bytes();
        let frames = quic::parse_long_header(datagram, 0)
            .and_then(|header| quic::initial_frames(datagram, &header));
        match frames {
            Ok(frames) => {
                let items = frames
                    .iter()
                    .map(|f| {
                        PyTuple::new(
                            py,
                            [
                                f.offset.into_pyobject(py)?.into_any(),
                                PyBytes::new(py, &f.data).into_any(),
                            ],
                        )
                    })
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(PyList::new(py, items)?.into_any())
            }
            Err(e) => Ok(PyString::new(py, e.as_str()).into_any()),
        }
    }
}

/// The long header at the start of `datagram` (a UDP payload) as a
/// `QuicHeader`, or the reason it is none as a str.
#[pyfunction]
pub fn quic_long_header<'py>(datagram: &Bound<'py, PyBytes>) -> PyResult<Bound<'py, PyAny>> {
    let py = datagram.py();
    let header: Result<LongHeader<'_>, _> = quic::parse_long_header(datagram.as_bytes(), 0);
    match header {
        Ok(h) => Ok(Bound::new(
            py,
            PyQuicHeader {
                datagram: datagram.clone().unbind(),
                version: h.version,
                dcid: PyBytes::new(py, h.dcid).unbind(),
                kind: h.kind.map(|k| k.as_str()),
            },
        )?
        .into_any()),
        Err(e) => Ok(PyString::new(py, e.as_str()).into_any()),
    }
}

/// Server name of the ClientHello in the Initial packets of one datagram:
/// `(status, host)` as `client_hello_sni` answers, or `("error", reason)`
/// when the datagram gives no CRYPTO data.
#[pyfunction]
pub fn quic_initial_sni(datagram: &[u8]) -> (&'static str, Option<String>) {
    match quic::initial_sni(datagram) {
        Ok(answer) => server_name_tuple(answer),
        Err(e) => ("error", Some(e.as_str().to_owned())),
    }
}

/// The CRYPTO data of one connection, keyed by offset (`govpass_core::quic::CryptoStream`).
#[pyclass(name = "CryptoStream", module = "govpass._core")]
pub struct PyCryptoStream {
    inner: CryptoStream,
}

// The default is written out in the signature so that the stub can show it.
const _: () = assert!(quic::DEFAULT_MAX_PIECES == 64);

#[pymethods]
impl PyCryptoStream {
    #[new]
    #[pyo3(signature = (limit, max_pieces = 64))]
    fn new(limit: usize, max_pieces: usize) -> Self {
        PyCryptoStream {
            inner: CryptoStream::new(limit, max_pieces),
        }
    }

    #[getter]
    fn limit(&self) -> usize {
        self.inner.limit()
    }

    #[getter]
    fn max_pieces(&self) -> usize {
        self.inner.max_pieces()
    }

    #[getter]
    fn stored(&self) -> usize {
        self.inner.stored()
    }

    /// Adds `data` at `offset`; False when a bound is crossed.
    fn add(&mut self, offset: u64, data: &[u8]) -> bool {
        self.inner.add(offset, data)
    }

    /// The contiguous data from offset 0.
    fn prefix<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.prefix())
    }

    /// `(status, host)` of the ClientHello the contiguous data starts with.
    fn sni(&self) -> (&'static str, Option<String>) {
        server_name_tuple(self.inner.server_name())
    }
}
