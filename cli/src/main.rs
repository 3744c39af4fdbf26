/// mimalloc instead of glibc's allocator: training and classification allocate feature maps
/// of tens of megabytes per layer, which glibc maps and unmaps from the kernel each time; the
/// page faults and zeroing were a quarter of a CPU classification (perf, docs/benchmarks.md).
/// `cobb::allocator::keep_freed_memory` keeps mimalloc from handing them back between steps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cobb::allocator::keep_freed_memory();
    cobb::main()
}
