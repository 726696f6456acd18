//! Engine configuration with the seed defaults, and its validation.

use std::fmt;
use std::str::FromStr;

use crate::error::ConfigError;

/// Which bytes of a flow are reshaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMode {
    /// Wait for the whole first TLS record (a ClientHello) and split it.
    TlsHello,
    /// Split the first payload packet as soon as it arrives, if it starts a
    /// ClientHello record; later packets of the record pass unchanged.
    Immediate,
}

impl SplitMode {
    pub const ACCEPTED: &'static str = "tls-hello, immediate";

    pub fn as_str(self) -> &'static str {
        match self {
            SplitMode::TlsHello => "tls-hello",
            SplitMode::Immediate => "immediate",
        }
    }
}

impl FromStr for SplitMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "tls-hello" => Ok(SplitMode::TlsHello),
            "immediate" => Ok(SplitMode::Immediate),
            _ => Err(ConfigError::new(
                "split-mode",
                format!("{s:?}"),
                SplitMode::ACCEPTED,
            )),
        }
    }
}

/// A position where the first record is cut, in bytes from the record start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPos {
    /// An absolute offset from the first byte of the record.
    Abs(u32),
    /// Relative to the first byte of the SNI host name.
    Sni(i32),
    /// Relative to the byte after the SNI host name.
    SniEnd(i32),
    /// Relative to the middle of the second-level label of the host name
    /// (`example` in `www.example.com`).
    MidSld(i32),
}

impl SplitPos {
    pub const ACCEPTED: &'static str =
        "N (offset >= 1), sni, sniend, midsld, each optionally followed by +N or -N";
}

impl fmt::Display for SplitPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, delta) = match *self {
            SplitPos::Abs(n) => return write!(f, "{n}"),
            SplitPos::Sni(d) => ("sni", d),
            SplitPos::SniEnd(d) => ("sniend", d),
            SplitPos::MidSld(d) => ("midsld", d),
        };
        match delta {
            0 => write!(f, "{name}"),
            d if d > 0 => write!(f, "{name}+{d}"),
            d => write!(f, "{name}{d}"),
        }
    }
}

impl FromStr for SplitPos {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::new("split-pos", format!("{text:?}"), SplitPos::ACCEPTED);
        let s = text.trim();
        let plain_number = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some(n) = plain_number.then(|| s.parse::<u32>().ok()).flatten() {
            return if n >= 1 {
                Ok(SplitPos::Abs(n))
            } else {
                Err(bad())
            };
        }
        let split_at = s.find(['+', '-']).unwrap_or(s.len());
        let (name, rest) = s.split_at(split_at);
        let delta = if rest.is_empty() {
            0
        } else {
            // Digits only after the one sign: `parse` alone would take "--5" as a
            // second sign (sni+5) and "--2147483648" would overflow on negation.
            let digits = &rest[1..];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let magnitude: i32 = digits.parse().map_err(|_| bad())?;
            if rest.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        };
        match name {
            "sni" => Ok(SplitPos::Sni(delta)),
            "sniend" => Ok(SplitPos::SniEnd(delta)),
            "midsld" => Ok(SplitPos::MidSld(delta)),
            _ => Err(bad()),
        }
    }
}

/// Everything the engine needs to know. Durations are in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Destination ports whose flows are inspected.
    pub ports: Vec<u16>,
    pub split_mode: SplitMode,
    /// Size of the first segment; 0 means no fixed first cut (positions only).
    pub split_chunk: u32,
    /// Further cut positions, combined with `split_chunk`.
    pub split_positions: Vec<SplitPos>,
    /// How long a flow may hold packets while its first record is incomplete.
    pub collect_timeout_us: u64,
    /// Most bytes of a flow's first record that are buffered.
    pub max_buffer: u32,
    /// Most packets of one flow that are held.
    pub max_held_pkts: u32,
    /// Largest payload of a generated segment with bare 20-byte IPv4 and
    /// TCP headers; longer headers (options, IPv6) reduce it by their extra
    /// bytes.
    pub max_seg_payload: u32,
    /// A flow without packets for this long is forgotten.
    pub flow_timeout_us: u64,
    /// Most flows tracked at once; the oldest is evicted (and fails open).
    pub max_flows: u32,
    /// Auto-learning: ClientHello retransmissions that count as a failure.
    pub auto_retrans: u32,
    /// Auto-learning: a watched flow whose ClientHello went out and that
    /// has seen no server data for this long counts as a failure (a censor
    /// that drops a later segment, or the reply, without a RST); 0: off.
    /// A value past the flow timeout acts as the flow timeout.
    pub auto_silence_us: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ports: vec![443],
            split_mode: SplitMode::TlsHello,
            split_chunk: 5,
            split_positions: Vec::new(),
            collect_timeout_us: 250_000,
            max_buffer: 64 * 1024,
            max_held_pkts: 32,
            max_seg_payload: 1460,
            flow_timeout_us: 30_000_000,
            max_flows: 131_072,
            auto_retrans: 3,
            auto_silence_us: 4_000_000,
        }
    }
}

/// Accepted ranges, shared by validation and error messages.
pub mod limits {
    pub const SPLIT_CHUNK: (u32, u32) = (0, 16_384);
    pub const COLLECT_TIMEOUT_US: (u64, u64) = (1_000, 60_000_000);
    pub const MAX_BUFFER: (u32, u32) = (64, 16 * 1024 * 1024);
    pub const MAX_HELD_PKTS: (u32, u32) = (1, 4096);
    pub const MAX_SEG_PAYLOAD: (u32, u32) = (1, 65_475);
    pub const FLOW_TIMEOUT_US: (u64, u64) = (1_000_000, 86_400_000_000);
    pub const MAX_FLOWS: (u32, u32) = (1, 16_777_216);
    pub const AUTO_RETRANS: (u32, u32) = (1, 100);
    /// Besides 0 (off).
    pub const AUTO_SILENCE_US: (u64, u64) = (500_000, 600_000_000);
    pub const SPLIT_POSITIONS: usize = 64;
}

fn check<T: PartialOrd + fmt::Display + Copy>(
    field: &'static str,
    value: T,
    (lo, hi): (T, T),
    unit: &str,
) -> Result<(), ConfigError> {
    if value < lo || value > hi {
        return Err(ConfigError::new(field, value, format!("{lo}..={hi}{unit}")));
    }
    Ok(())
}

/// Durations are kept in microseconds but users speak milliseconds.
fn check_ms(field: &'static str, us: u64, (lo, hi): (u64, u64)) -> Result<(), ConfigError> {
    if us < lo || us > hi {
        let ms = |v: u64| v as f64 / 1000.0;
        let accepted = format!("{}..={} ms", ms(lo), ms(hi));
        return Err(ConfigError::new(field, format!("{} ms", ms(us)), accepted));
    }
    Ok(())
}

/// Checks a split strategy (shared by the engine's default and profiles).
pub fn check_strategy(chunk: u32, positions: &[SplitPos]) -> Result<(), ConfigError> {
    check("split-chunk", chunk, limits::SPLIT_CHUNK, " bytes")?;
    if chunk == 0 && positions.is_empty() {
        return Err(ConfigError::new(
            "split-chunk",
            0,
            "1..=16384 bytes, or 0 together with at least one split position",
        ));
    }
    if positions.len() > limits::SPLIT_POSITIONS {
        let got = format!("{} positions", positions.len());
        return Err(ConfigError::new("split-pos", got, "at most 64 positions"));
    }
    Ok(())
}

impl EngineConfig {
    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ports.is_empty() || self.ports.contains(&0) {
            let got = format!("{:?}", self.ports);
            return Err(ConfigError::new(
                "ports",
                got,
                "a non-empty list of ports in 1..=65535",
            ));
        }
        check_strategy(self.split_chunk, &self.split_positions)?;
        check_ms(
            "collect-timeout",
            self.collect_timeout_us,
            limits::COLLECT_TIMEOUT_US,
        )?;
        check("max-buffer", self.max_buffer, limits::MAX_BUFFER, " bytes")?;
        check(
            "max-held-pkts",
            self.max_held_pkts,
            limits::MAX_HELD_PKTS,
            "",
        )?;
        check(
            "max-seg-payload",
            self.max_seg_payload,
            limits::MAX_SEG_PAYLOAD,
            " bytes",
        )?;
        check_ms(
            "flow-timeout",
            self.flow_timeout_us,
            limits::FLOW_TIMEOUT_US,
        )?;
        check("max-flows", self.max_flows, limits::MAX_FLOWS, "")?;
        check("auto-retrans", self.auto_retrans, limits::AUTO_RETRANS, "")?;
        let (lo, hi) = limits::AUTO_SILENCE_US;
        let silence = self.auto_silence_us;
        if silence != 0 && !(lo..=hi).contains(&silence) {
            let s = |us: u64| us as f64 / 1e6;
            return Err(ConfigError::new(
                "auto-silence",
                format!("{} s", s(silence)),
                format!("0 (off) or {}..={} s", s(lo), s(hi)),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_defaults_and_valid() {
        let c = EngineConfig::default();
        assert_eq!(c.split_chunk, 5);
        assert_eq!(c.collect_timeout_us, 250_000);
        assert_eq!(c.max_buffer, 65_536);
        assert_eq!(c.max_held_pkts, 32);
        assert_eq!(c.max_seg_payload, 1460);
        assert_eq!(c.flow_timeout_us, 30_000_000);
        assert_eq!(c.split_mode, SplitMode::TlsHello);
        assert_eq!(c.auto_silence_us, 4_000_000);
        c.validate().unwrap();
    }

    #[test]
    fn positions_parse_and_print() {
        for (text, pos) in [
            ("1", SplitPos::Abs(1)),
            ("sni", SplitPos::Sni(0)),
            ("sni+2", SplitPos::Sni(2)),
            ("sni-1", SplitPos::Sni(-1)),
            ("sniend", SplitPos::SniEnd(0)),
            ("sniend-3", SplitPos::SniEnd(-3)),
            ("midsld", SplitPos::MidSld(0)),
            ("midsld+1", SplitPos::MidSld(1)),
            ("sni-2147483647", SplitPos::Sni(-2147483647)),
            ("sniend+2147483647", SplitPos::SniEnd(2147483647)),
        ] {
            assert_eq!(text.parse::<SplitPos>().unwrap(), pos, "{text}");
            assert_eq!(pos.to_string(), text);
        }
        for bad in [
            "0",
            "",
            "sni+",
            "foo",
            "sni+x",
            "-3",
            "midsld*2",
            "sni--5",
            "sni+-5",
            "sni-+5",
            "sni++5",
            "sni--2147483648",
            "sni-2147483648",
            "sni+2147483648",
            "sniend+99999999999",
            "sni+ 5",
            "sni-5x",
            "+5",
            "4294967296",
        ] {
            let err = bad.parse::<SplitPos>().unwrap_err();
            assert_eq!(err.field, "split-pos", "{bad}");
        }
    }

    #[test]
    fn each_limit_is_checked_at_its_boundary() {
        let ok = EngineConfig::default();
        let cases: Vec<(&str, EngineConfig, EngineConfig)> = vec![
            (
                "max-held-pkts",
                EngineConfig {
                    max_held_pkts: 1,
                    ..ok.clone()
                },
                EngineConfig {
                    max_held_pkts: 0,
                    ..ok.clone()
                },
            ),
            (
                "max-buffer",
                EngineConfig {
                    max_buffer: 64,
                    ..ok.clone()
                },
                EngineConfig {
                    max_buffer: 63,
                    ..ok.clone()
                },
            ),
            (
                "max-seg-payload",
                EngineConfig {
                    max_seg_payload: 65_475,
                    ..ok.clone()
                },
                EngineConfig {
                    max_seg_payload: 65_476,
                    ..ok.clone()
                },
            ),
            (
                "split-chunk",
                EngineConfig {
                    split_chunk: 16_384,
                    ..ok.clone()
                },
                EngineConfig {
                    split_chunk: 16_385,
                    ..ok.clone()
                },
            ),
            (
                "collect-timeout",
                EngineConfig {
                    collect_timeout_us: 1_000,
                    ..ok.clone()
                },
                EngineConfig {
                    collect_timeout_us: 999,
                    ..ok.clone()
                },
            ),
            (
                "max-flows",
                EngineConfig {
                    max_flows: 1,
                    ..ok.clone()
                },
                EngineConfig {
                    max_flows: 0,
                    ..ok.clone()
                },
            ),
            (
                "auto-silence",
                EngineConfig {
                    auto_silence_us: 500_000,
                    ..ok.clone()
                },
                EngineConfig {
                    auto_silence_us: 499_999,
                    ..ok.clone()
                },
            ),
            (
                "auto-silence",
                EngineConfig {
                    auto_silence_us: 600_000_000,
                    ..ok.clone()
                },
                EngineConfig {
                    auto_silence_us: 600_000_001,
                    ..ok.clone()
                },
            ),
            (
                "ports",
                EngineConfig {
                    ports: vec![1],
                    ..ok.clone()
                },
                EngineConfig {
                    ports: vec![0],
                    ..ok.clone()
                },
            ),
        ];
        for (field, good, bad) in cases {
            good.validate().unwrap();
            let err = bad.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().contains("accepted"), "{err}");
        }
    }

    #[test]
    fn zero_chunk_needs_positions() {
        let c = EngineConfig {
            split_chunk: 0,
            ..EngineConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "split-chunk");
        let c = EngineConfig {
            split_positions: vec![SplitPos::MidSld(0)],
            ..c
        };
        c.validate().unwrap();
    }

    #[test]
    fn zero_auto_silence_turns_it_off() {
        let c = EngineConfig {
            auto_silence_us: 0,
            ..EngineConfig::default()
        };
        c.validate().unwrap();
    }
}
