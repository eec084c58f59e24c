fn main() -> std::process::ExitCode {
    amqp_relay::cli::main()
}
