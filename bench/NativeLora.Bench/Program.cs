using BenchmarkDotNet.Running;

// nativelora-bench: `train ...` runs the end-to-end training benchmark (TrainBench), `roofline ...` the step's
// heavy pieces against the measured ceilings and PyTorch's attention (RooflineBench), `serve ...` the
// server load test (ServeLoadBench); anything else goes to BenchmarkDotNet (`--filter '*Gemm*'`),
// always in-process (BenchJob); `--quick` shortens every job for a time-boxed run. Results with the
// machine go to bench/RESULTS.md.
if (args.Length > 0 && args[0] == "train")
    return NativeLora.Bench.TrainBench.Run(args[1..]);
if (args.Length > 0 && args[0] == "roofline")
    return NativeLora.Bench.RooflineBench.Run(args[1..]);
if (args.Length > 0 && args[0] == "serve")
    return NativeLora.Bench.ServeLoadBench.Run(args[1..]);
if (args.Contains("--quick"))
{
    NativeLora.Bench.BenchJob.Quick = true;
    args = args.Where(a => a != "--quick").ToArray();
}
BenchmarkSwitcher.FromAssembly(typeof(NativeLora.Bench.GemmBenchmarks).Assembly).Run(args);
return 0;
