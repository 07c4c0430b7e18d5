//! Where a bench pass's CPU went: the broker, PostgreSQL, this process, and the whole
//! machine, read from `/proc` (Linux) before and after the pass.
//!
//! The daemon, RabbitMQ and PostgreSQL share this host's cores, so a rate alone does
//! not say which of them is the limit; CPU per event does, and it bounds what any
//! design could reach on these cores.

use procfs::CurrentSI;

/// CPU seconds used so far.
#[derive(Clone, Copy, Default, Debug)]
pub struct Cpu {
    /// RabbitMQ (`beam.smp`).
    pub broker: f64,
    /// Every PostgreSQL process, with the backends that have exited since it started
    /// (the postmaster's children's times).
    pub postgres: f64,
    /// This process: the bench's own clients and the in-process daemon.
    pub bench: f64,
    /// The whole machine, busy (not idle, not waiting on I/O).
    pub machine: f64,
}

impl Cpu {
    /// A reading now. Processes that cannot be read (gone mid-scan) are skipped.
    pub fn now() -> Cpu {
        let tps = procfs::ticks_per_second() as f64;
        let me = std::process::id() as i32;
        let mut c = Cpu::default();
        if let Ok(all) = procfs::process::all_processes() {
            for p in all.flatten() {
                let Ok(s) = p.stat() else { continue };
                let own = (s.utime + s.stime) as f64 / tps;
                if s.pid == me {
                    c.bench += own;
                } else if s.comm == "beam.smp" {
                    c.broker += own;
                } else if s.comm.starts_with("postgres") {
                    c.postgres += own + (s.cutime + s.cstime).max(0) as f64 / tps;
                }
            }
        }
        if let Ok(k) = procfs::KernelStats::current() {
            let t = k.total;
            let opt = |v: Option<u64>| v.unwrap_or(0);
            let busy = t.user + t.nice + t.system + opt(t.irq) + opt(t.softirq) + opt(t.steal);
            c.machine = busy as f64 / tps;
        }
        c
    }

    /// The CPU used between `earlier` and this reading.
    pub fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            broker: self.broker - earlier.broker,
            postgres: self.postgres - earlier.postgres,
            bench: self.bench - earlier.bench,
            machine: self.machine - earlier.machine,
        }
    }

    /// µs of the machine's CPU per unit of work.
    pub fn per_unit(&self, units: f64) -> f64 {
        self.machine * 1e6 / units
    }

    /// One line: µs of CPU per unit of work for each party, and how busy the machine's
    /// cores were over `wall` seconds.
    pub fn per(&self, units: f64, unit: &str, wall: f64) -> String {
        let us = |s: f64| s * 1e6 / units;
        format!(
            "CPU per {unit}: broker {:.1} µs, PostgreSQL {:.1} µs, assayer/clients {:.1} µs; machine {:.1} µs ({:.0}% of {} cores busy)",
            us(self.broker),
            us(self.postgres),
            us(self.bench),
            us(self.machine),
            100.0 * self.machine / (wall * cores()),
            cores()
        )
    }
}

/// This machine's cores.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}
