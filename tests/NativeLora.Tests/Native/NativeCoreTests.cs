using NativeLora.Native;

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

    [Test]
    public void ResultDTypeMustBeTheOperandsOrF32()
    {
        _ = Support.TestDevice.Shared;
        var e = Assert.Throws<NativeCoreException>(() =>
            NativeCore.Gemm(NlDType.F32, NlDType.BF16, false, false, 1, 1, 1, 1f, 16, 1, 16, 1, 0f, 16, 1));
        Assert.That(e!.Message, Does.Contain("result dtype"));
    }

    [Test]
    public void BadLeadingDimensionIsRejected()
    {
        _ = Support.TestDevice.Shared;
        var e = Assert.Throws<NativeCoreException>(() =>
            NativeCore.Gemm(NlDType.F32, NlDType.F32, false, false, 4, 4, 8, 1f, 16, 4, 16, 4, 0f, 16, 4));
        Assert.That(e!.Message, Does.Contain("lda=4 < 8"));
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
            NativeCore.EventRecord(start, stream);
            Thread.Sleep(20);
            NativeCore.EventRecord(end, stream);
            NativeCore.EventSynchronize(end);
            NativeCore.StreamSynchronize(stream);
            Assert.That(NativeCore.EventElapsedMs(start, end), Is.GreaterThanOrEqualTo(0f));
        }
        finally
        {
            NativeCore.EventDestroy(start);
            NativeCore.EventDestroy(end);
            NativeCore.StreamDestroy(stream);
        }
    }
}
