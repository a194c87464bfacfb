//! The `os-credits` command: the service and the tools around it.

mod cli;

/// Caps glibc's malloc arenas at two. By default glibc gives each thread
/// that allocates its own arena (up to 8 per core) and their fragmentation
/// adds tens of MiB to the service's peak memory; two keep it within its
/// budget (see `benches/service.rs`) at no measurable cost in throughput.
/// `MALLOC_ARENA_MAX` in the environment still takes precedence.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts allocator settings; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            // A fixed threshold (glibc raises it after the first large free,
            // up to 32 MiB): request bodies of a few MiB stay mmapped and go
            // back to the system when freed instead of fragmenting the heap.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        }
    }
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = cli::Cli::parse();
    let log_filter = cli::init_tracing(&args);
    match cli::run(args, log_filter) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
