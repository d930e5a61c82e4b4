//! `mta`: the mail transfer agent binary, the command line of [`mta_bin::cli`] with the
//! built-in filters only. A custom MTA is the same with filters of its own: see
//! `examples/custom_mta.rs`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mta_bin::MtaBuilder::new().main()
}
