//! The `crossmerge` binary: parse, run, print, exit code. Nothing else lives here.

mod cli;

fn main() -> std::process::ExitCode {
    element_wise_ops_on_the_calling_thread();
    cli::main()
}

/// candle runs its element-wise ops (in training, every gradient it sums) on a thread pool of
/// its own beside rayon's, which the matrix products and crossmerge's kernels run on; after
/// each op its workers spin before they sleep, on the cores rayon's threads then need. With
/// `CANDLE_NUM_THREADS=1` that pool has no workers and those ops run on the calling thread
/// (training e5-small on 2 cores: faster, the same bits; see BENCHMARKS.md). A value the user
/// set is kept.
fn element_wise_ops_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        #[allow(unsafe_code)]
        // SAFETY: the first thing `main` does, while the process has one thread: nothing can
        // read the environment at the same time.
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    }
}
