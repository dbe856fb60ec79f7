using BenchmarkDotNet.Running;

// nativelora-bench: BenchmarkDotNet kernels and GEMMs (`nativelora-bench --filter '*Gemm*'`).
// Results with the machine they ran on go to bench/RESULTS.md.
BenchmarkSwitcher.FromAssembly(typeof(NativeLora.Bench.GemmBenchmarks).Assembly).Run(args);
