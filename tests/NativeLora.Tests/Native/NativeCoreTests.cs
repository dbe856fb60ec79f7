using NativeLora.Native;
using NativeLora.Tensors;

namespace NativeLora.Tests.Native;

public class NativeCoreTests
{
    [Test]
    public void BackendNameIsOneOfTheTwoBackends()
    {
        _ = Support.TestDevice.Shared;
        Assert.That(NativeCore.BackendName, Is.AnyOf("cuda", "cpu-openblas"));
        Assert.That(NativeCore.AbiVersion, Is.EqualTo(NativeCore.ExpectedAbiVersion));
    }

    [Test]
    public void ErrorsBecomeExceptionsThatNameTheCallAndTheReason()
    {
        _ = Support.TestDevice.Shared;
        var e = Assert.Throws<NativeCoreException>(() =>
            NativeCore.Gemm(NlDType.F32, NlDType.F32, false, false, 4, 4, 4, 1f, 0, 4, 0, 4, 0f, 0, 4));
        Assert.That(e!.Function, Is.EqualTo("nl_gemm"));
        Assert.That(e.Status, Is.EqualTo(NlStatus.InvalidArgument));
        Assert.That(e.Message, Does.Contain("nl_gemm").And.Contain("NULL"));

        e = Assert.Throws<NativeCoreException>(() => NativeCore.ManagedAlloc(0));
        Assert.That(e!.Message, Does.Contain("nl_managed_alloc").And.Contain("bytes must be > 0"));
    }

    /// <summary>An m×k by k×m GEMM of f32 operands whose leading dimensions are all m (too short for A when k &gt; m), its result of type <paramref name="result"/>.</summary>
    [TestCase(NlDType.BF16, 1, 1, "result dtype", TestName = "ResultDTypeMustBeTheOperandsOrF32")]
    [TestCase(NlDType.F32, 4, 8, "lda=4 < 8", TestName = "BadLeadingDimensionIsRejected")]
    public void BadGemmArgumentsAreRejected(NlDType result, int m, int k, string reason)
    {
        _ = Support.TestDevice.Shared;
        var e = Assert.Throws<NativeCoreException>(() =>
            NativeCore.Gemm(NlDType.F32, result, false, false, m, m, k, 1f, 16, m, 16, m, 0f, 16, m));
        Assert.That(e!.Message, Does.Contain(reason));
    }

    [Test]
    public void MemoryInfoIsPlausible()
    {
        var (free, total) = Support.TestDevice.Shared.MemoryInfo();
        Assert.That(total, Is.GreaterThan(0UL));
        Assert.That(free, Is.LessThanOrEqualTo(total));
    }

    [Test]
    public unsafe void DeviceStatsReportTheProcessAndTheDevice()
    {
        _ = Support.TestDevice.Shared;
        var before = NativeCore.QueryDeviceStats();
        Assert.That(before.ProcessCpuSeconds, Is.Not.Null.And.GreaterThan(0));
        Assert.That(before.ProcessRssBytes, Is.Not.Null.And.GreaterThan(0));
        // the process's own CPU time, read independently by .NET, brackets the core's figure
        var lo = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
        var mid = NativeCore.QueryDeviceStats().ProcessCpuSeconds!.Value;
        var hi = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
        Assert.That(mid, Is.InRange(lo - 0.05, hi + 0.05));

        // touching 64 MiB of fresh native memory raises the resident set by about that much
        const int bytes = 64 << 20;
        var p = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc(bytes);
        try
        {
            for (int i = 0; i < bytes; i += 4096) p[i] = 1;
            var after = NativeCore.QueryDeviceStats();
            Assert.That(after.ProcessRssBytes!.Value - before.ProcessRssBytes!.Value, Is.GreaterThan(48L << 20));
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.Free(p);
        }

        Assert.That(before.MemoryTotalBytes, Is.Not.Null.And.GreaterThan(0));
        Assert.That(before.MemoryUsedBytes, Is.Not.Null.And.InRange(0, before.MemoryTotalBytes!.Value));
        if (NativeCore.IsCuda)
        {
            Assert.That(before.Source, Is.AnyOf(NlStatsSource.Nvml, NlStatsSource.CudaRuntime));
            Assert.That(before.PciBusId, Does.Match("^[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\\.[0-9]$"));
            if (before.Source == NlStatsSource.Nvml) Assert.That(before.Utilization, Is.Not.Null.And.InRange(0.0, 1.0));
        }
        else
        {
            Assert.That(before.Source, Is.EqualTo(NlStatsSource.Host));
            Assert.That(before.Utilization, Is.Null, "the CPU backend has no device utilisation to report");
            Assert.That(before.PciBusId, Is.Empty);
            var (free, total) = NativeCore.MemoryInfo();
            Assert.That(before.MemoryTotalBytes, Is.EqualTo((long)total));
        }
    }

    [Test]
    public void EventsMeasureElapsedTime()
    {
        _ = Support.TestDevice.Shared;
        var stream = NativeCore.StreamCreate();
        var start = NativeCore.EventCreate();
        var end = NativeCore.EventCreate();
        try
        {
            // a GEMM queued between the events (not a host sleep, which a device event does not see): the time must be > 0
            var device = Support.TestDevice.Shared;
            const int n = 384;
            using var a = device.Allocate(DType.F32, n, n);
            using var b = device.Allocate(DType.F32, n, n);
            using var c = device.Allocate(DType.F32, n, n);
            a.CopyFrom<float>(Support.Check.RandomFloats(new Random(1), n * n));
            b.CopyFrom<float>(Support.Check.RandomFloats(new Random(2), n * n));
            var work = device.IsCuda ? ((ILGPU.Runtime.Cuda.CudaStream)device.Accelerator.DefaultStream).StreamPtr : stream;
            device.Synchronize();
            NativeCore.EventRecord(start, work);
            NativeCore.Gemm(NlDType.F32, NlDType.F32, false, false, n, n, n, 1f, a.DataPointer, n, b.DataPointer, n, 0f, c.DataPointer, n);
            NativeCore.EventRecord(end, work);
            NativeCore.EventSynchronize(end);
            NativeCore.StreamSynchronize(stream);
            Assert.That(NativeCore.EventElapsedMs(start, end), Is.GreaterThan(0f));
        }
        finally
        {
            NativeCore.EventDestroy(start);
            NativeCore.EventDestroy(end);
            NativeCore.StreamDestroy(stream);
        }
    }
}
