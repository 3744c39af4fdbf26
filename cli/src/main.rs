fn main() -> std::process::ExitCode {
    cobb::main()
}
