//! Counters of the engine.

/// Why a flow was released unmodified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The first bytes are not a TLS ClientHello record.
    NotTls,
    /// The record does not fit in `max-buffer`.
    Overflow,
    /// More than `max-held-pkts` packets would be held.
    TooManyPackets,
    /// `collect-timeout` passed before the record was complete.
    Timeout,
    /// A SYN carried data (TCP Fast Open).
    SynData,
    /// FIN or RST while collecting.
    FinRst,
    /// Copies of the same stream bytes differ, or data before the first byte.
    Ambiguous,
    /// A packet of the flow was cut short by the capture.
    Truncated,
    /// The flow table was full and this flow was the oldest.
    Evicted,
    /// No cut position falls inside the record.
    NoCut,
    /// An internal error (a caught panic).
    Internal,
}

impl FailReason {
    pub const ALL: [FailReason; 11] = [
        FailReason::NotTls,
        FailReason::Overflow,
        FailReason::TooManyPackets,
        FailReason::Timeout,
        FailReason::SynData,
        FailReason::FinRst,
        FailReason::Ambiguous,
        FailReason::Truncated,
        FailReason::Evicted,
        FailReason::NoCut,
        FailReason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::NotTls => "not_tls",
            FailReason::Overflow => "overflow",
            FailReason::TooManyPackets => "too_many_packets",
            FailReason::Timeout => "timeout",
            FailReason::SynData => "syn_data",
            FailReason::FinRst => "fin_rst",
            FailReason::Ambiguous => "ambiguous",
            FailReason::Truncated => "truncated",
            FailReason::Evicted => "evicted",
            FailReason::NoCut => "no_cut",
            FailReason::Internal => "internal",
        }
    }
}

/// Counters since the engine was created, and gauges of what is held now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets given to `process`.
    pub packets: u64,
    /// Packets that passed at once, untouched.
    pub passed: u64,
    /// Flows created (first payload packet seen).
    pub flows: u64,
    /// Flows tracked now.
    pub flows_now: u64,
    /// First records split.
    pub splits: u64,
    /// Retransmissions of a split record split again.
    pub resplits: u64,
    /// Segments generated.
    pub segments: u64,
    /// Flows evicted because the table was full.
    pub evicted: u64,
    /// Flows passed untouched because a pass profile (or no profile) chose them.
    pub profile_pass: u64,
    /// Flows passed untouched and watched for failure (auto-learning).
    pub watched: u64,
    /// Auto-learning verdicts reported: blocked-looking and working flows.
    pub auto_failures: u64,
    pub auto_successes: u64,
    /// Of the failures, those of flows that saw no server data within
    /// auto-silence after their ClientHello.
    pub auto_silent: u64,
    /// Fail-opens, indexed like [`FailReason::ALL`].
    pub fail_open: [u64; 11],
    pub held_packets_now: u64,
    pub held_bytes_now: u64,
    pub held_packets_peak: u64,
    pub held_bytes_peak: u64,
}

impl Stats {
    pub fn fail(&mut self, reason: FailReason) {
        self.fail_open[reason as usize] += 1;
    }

    pub fn fail_count(&self, reason: FailReason) -> u64 {
        self.fail_open[reason as usize]
    }

    pub(crate) fn hold(&mut self, bytes: usize) {
        self.held_packets_now += 1;
        self.held_bytes_now += bytes as u64;
        self.held_packets_peak = self.held_packets_peak.max(self.held_packets_now);
        self.held_bytes_peak = self.held_bytes_peak.max(self.held_bytes_now);
    }

    pub(crate) fn unhold(&mut self, bytes: usize) {
        self.held_packets_now -= 1;
        self.held_bytes_now -= bytes as u64;
    }
}
