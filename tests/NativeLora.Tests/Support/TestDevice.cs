using NativeLora.Devices;
using NativeLora.Kernels;

namespace NativeLora.Tests.Support;

/// <summary>One ComputeDevice for the whole test run (the native core is process-global).</summary>
public static class TestDevice
{
    private static ComputeDevice? s_device;

    public static ComputeDevice Shared
    {
        get
        {
            if (s_device == null)
            {
                var kind = ComputeDevice.ParseKind(Environment.GetEnvironmentVariable("NATIVELORA_TEST_DEVICE") ?? "auto");
                s_device = ComputeDevice.Open(kind);
                TestContext.Progress.WriteLine($"test device: {s_device.Description}");
            }
            return s_device;
        }
    }

    private static KernelSet? s_cpuVariants, s_gpuVariants;

    /// <summary>The barrier-free CPU variants or the GPU variants (shared memory, shuffles) on the test device.</summary>
    public static KernelSet Variant(bool gpu) => gpu
        ? s_gpuVariants ??= new KernelSet(Shared.Accelerator, gpuVariants: true)
        : s_cpuVariants ??= new KernelSet(Shared.Accelerator, gpuVariants: false);

    internal static void Close()
    {
        s_device?.Dispose();
        s_device = null;
        s_cpuVariants = s_gpuVariants = null;
    }
}

[SetUpFixture]
public sealed class TestRunLifetime
{
    [OneTimeTearDown]
    public void CloseDevice() => TestDevice.Close();
}
