using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace NativeLora.Devices;

/// <summary>
/// An ILGPU buffer over memory the native core allocated (unified or pinned host memory on CUDA,
/// aligned host memory on CPU), so ILGPU kernels can read and write the paged optimizer states and
/// host-resident tensors in place. ILGPU 1.5 has no public "wrap this pointer" call, but MemoryBuffer is an open
/// abstract class whose NativePtr is what kernel launches pass; subclassing it is the seam.
/// The native core owns the memory: disposing this frees it through the given function.
/// </summary>
internal sealed class ExternalMemoryBuffer : MemoryBuffer
{
    private readonly bool _isCuda;
    private readonly Action<nint> _free;

    /// <param name="free">frees the memory (nl_managed_free or nl_host_free) and updates the device's counters; called once</param>
    public ExternalMemoryBuffer(Accelerator accelerator, nint pointer, long lengthInBytes, Action<nint> free)
        : base(accelerator, lengthInBytes, 1)
    {
        NativePtr = pointer;
        _isCuda = accelerator.AcceleratorType == AcceleratorType.Cuda;
        _free = free;
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
            var pointer = NativePtr;
            NativePtr = 0;
            _free(pointer);
        }
    }
}
