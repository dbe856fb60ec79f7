using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Perfolizer.Horology;

namespace NativeLora.Bench;

/// <summary>
/// The one job every benchmark class runs. In-process: BenchmarkDotNet's default toolchain generates and
/// builds a project per benchmark, which needs the .NET SDK; the GPU bundle carries only the runtime.
/// `--quick` (the bundle's time budget on a lent GPU) trades precision for time: one warm-up and three
/// iterations of ~100 ms instead of the classes' own counts at BenchmarkDotNet's 500 ms.
/// </summary>
internal static class BenchJob
{
    public static bool Quick { get; set; }

    public static Job InProcess(int warmups, int iterations)
    {
        var job = Job.Default.WithToolchain(InProcessEmitToolchain.Instance);
        return Quick
            ? job.WithWarmupCount(1).WithIterationCount(3).WithIterationTime(TimeInterval.FromMilliseconds(100))
            : job.WithWarmupCount(warmups).WithIterationCount(iterations);
    }
}
