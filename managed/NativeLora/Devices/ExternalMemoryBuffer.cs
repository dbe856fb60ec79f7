using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace NativeLora.Devices;

/// <summary>
/// An ILGPU buffer over memory the native core allocated (unified memory on CUDA, aligned
/// host memory on CPU), so ILGPU kernels can read and write the paged optimizer states in
/// place. ILGPU 1.5 has no public "wrap this pointer" call, but MemoryBuffer is an open
/// abstract class whose NativePtr is what kernel launches pass; subclassing it is the seam.
/// The native core owns the memory: disposing this frees it through nl_managed_free.
/// </summary>
internal sealed class ExternalMemoryBuffer : MemoryBuffer
{
    private readonly bool _isCuda;
    private readonly Action? _onFree;

    /// <param name="onFree">called once the memory is freed (the device's byte counters)</param>
    public ExternalMemoryBuffer(Accelerator accelerator, nint pointer, long lengthInBytes, Action? onFree = null)
        : base(accelerator, lengthInBytes, 1)
    {
        NativePtr = pointer;
        _isCuda = accelerator.AcceleratorType == AcceleratorType.Cuda;
        _onFree = onFree;
    }

    protected override void MemSet(AcceleratorStream stream, byte value, in ArrayView<byte> targetView)
    {
        if (_isCuda)
        {
            CudaMemoryBuffer.CudaMemSet(stream as CudaStream, value, targetView);
            return;
        }
        stream.Synchronize();
        unsafe
        {
            new Span<byte>((void*)targetView.LoadEffectiveAddressAsPtr(), checked((int)targetView.Length)).Fill(value);
        }
    }

    protected override void CopyFrom(AcceleratorStream stream, in ArrayView<byte> sourceView, in ArrayView<byte> targetView) =>
        Copy(stream, sourceView, targetView);

    protected override void CopyTo(AcceleratorStream stream, in ArrayView<byte> sourceView, in ArrayView<byte> targetView) =>
        Copy(stream, sourceView, targetView);

    private void Copy(AcceleratorStream stream, in ArrayView<byte> source, in ArrayView<byte> target)
    {
        if (_isCuda)
        {
            CudaMemoryBuffer.CudaCopy(stream as CudaStream, source, target);
            return;
        }
        stream.Synchronize();
        unsafe
        {
            Buffer.MemoryCopy((void*)source.LoadEffectiveAddressAsPtr(), (void*)target.LoadEffectiveAddressAsPtr(),
                target.Length, source.Length);
        }
    }

    protected override void DisposeAcceleratorObject(bool disposing)
    {
        if (NativePtr != 0)
        {
            Native.NativeCore.ManagedFree(NativePtr);
            NativePtr = 0;
            _onFree?.Invoke();
        }
    }
}
