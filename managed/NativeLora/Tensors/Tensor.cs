using System.Runtime.InteropServices;
using ILGPU;
using ILGPU.Runtime;
using NativeLora.Devices;
using NativeLora.Kernels;

namespace NativeLora.Tensors;

/// <summary>
/// The one tensor type: a dtype, a shape, row-major contiguous strides, and a byte range of a
/// device buffer. Views (<see cref="Reshape"/>, <see cref="Slice"/>) share the buffer and do
/// not own it: a view is valid while the tensor it came from is alive (llm.c's rule: one
/// owner per allocation, no reference counting).
/// </summary>
public sealed class Tensor : IDisposable
{
    public ComputeDevice Device { get; }
    public DType DType { get; }
    public int[] Shape { get; }
    public long[] Strides { get; }
    public long ElementCount { get; }
    public long ByteOffset { get; }
    internal MemoryBuffer Buffer { get; }
    // what an owning tensor gives back on Dispose: an allocator block, or a buffer of its own (paged memory);
    // views have neither
    private readonly CachingAllocator.Block? _block;
    private readonly MemoryBuffer? _ownBuffer;
    private bool _disposed;

    /// <summary>An owning tensor over an allocator block.</summary>
    internal Tensor(ComputeDevice device, CachingAllocator.Block block, DType dtype, int[] shape)
        : this(device, block.Buffer, block.Offset, dtype, shape, onHost: false) => _block = block;

    /// <summary>An owning tensor over a buffer of its own (paged or host memory), freed on Dispose.</summary>
    internal Tensor(ComputeDevice device, MemoryBuffer ownBuffer, DType dtype, int[] shape, bool onHost)
        : this(device, ownBuffer, 0, dtype, shape, onHost) => _ownBuffer = ownBuffer;

    private Tensor(ComputeDevice device, MemoryBuffer buffer, long byteOffset, DType dtype, int[] shape, bool onHost)
    {
        OnHost = onHost;
        Device = device;
        Buffer = buffer;
        ByteOffset = byteOffset;
        DType = dtype;
        Shape = (int[])shape.Clone();
        ElementCount = CountElements(shape);
        Strides = ContiguousStrides(shape);
        if (byteOffset < 0 || byteOffset + ByteLength > buffer.LengthInBytes)
            throw new ArgumentException($"tensor range [{byteOffset}, {byteOffset + ByteLength}) is outside its buffer of {buffer.LengthInBytes} bytes");
    }

    /// <summary>Lives in host memory that kernels read in place (<see cref="ComputeDevice.AllocateHost"/>), not in device memory.</summary>
    public bool OnHost { get; }

    public int Rank => Shape.Length;
    public long ByteLength => ElementCount * DType.SizeOf();
    public int Dim(int i) => Shape[i < 0 ? Shape.Length + i : i];

    /// <summary>Device address of the first element, for the native core.</summary>
    public nint DataPointer
    {
        get
        {
            ThrowIfDisposed();
            return Buffer.NativePtr + (nint)ByteOffset;
        }
    }

    public override string ToString() => $"Tensor({DType.Name()}, [{string.Join(", ", Shape)}])";

    public static long CountElements(int[] shape)
    {
        long n = 1;
        foreach (var d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension in shape [{string.Join(", ", shape)}]");
            n = checked(n * d);
        }
        return n;
    }

    public static long[] ContiguousStrides(int[] shape)
    {
        var strides = new long[shape.Length];
        long s = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = s;
            s *= shape[i];
        }
        return strides;
    }

    /// <summary>The elements as an ILGPU view of T (sizeof(T) must equal the dtype's size).</summary>
    public ArrayView<T> View<T>() where T : unmanaged
    {
        ThrowIfDisposed();
        var size = Marshal.SizeOf<T>();
        if (size != DType.SizeOf())
            throw new InvalidOperationException($"cannot view a {DType.Name()} tensor as {typeof(T).Name} (element sizes {DType.SizeOf()} and {size})");
        return Buffer.AsRawArrayView(ByteOffset, ByteLength).Cast<T>();
    }

    /// <summary>
    /// The elements in host memory, for the CPU's host kernels: waits for the accelerator's queued kernels
    /// first (as before a native call). Only a CPU device's tensors live in host memory.
    /// </summary>
    public HostView<T> Host<T>() where T : unmanaged
    {
        ThrowIfDisposed();
        var size = Marshal.SizeOf<T>();
        if (size != DType.SizeOf())
            throw new InvalidOperationException($"cannot view a {DType.Name()} tensor as {typeof(T).Name} (element sizes {DType.SizeOf()} and {size})");
        if (Device.IsCuda) throw new InvalidOperationException($"{this} is in GPU memory: the host kernels run on the CPU device only");
        Device.BeforeNativeCall();
        return new HostView<T>(DataPointer, ElementCount);
    }

    /// <summary>The tensor's bytes as an ILGPU view (for copies that ignore the dtype).</summary>
    public ArrayView<byte> RawBytes()
    {
        ThrowIfDisposed();
        return Buffer.AsRawArrayView(ByteOffset, ByteLength);
    }

    /// <summary>Device-side copy into a tensor of the same dtype and element count.</summary>
    public void CopyTo(Tensor destination)
    {
        if (destination.DType != DType || destination.ElementCount != ElementCount)
            throw new ArgumentException($"cannot copy {this} into {destination}");
        if (ElementCount > 0) RawBytes().CopyTo(destination.RawBytes());
    }

    /// <summary>A view with another shape over the same elements.</summary>
    public Tensor Reshape(params int[] shape)
    {
        ThrowIfDisposed();
        // one -1 dimension is inferred
        var s = (int[])shape.Clone();
        int infer = Array.IndexOf(s, -1);
        if (infer >= 0)
        {
            long known = 1;
            for (int i = 0; i < s.Length; i++) if (i != infer) known *= s[i];
            if (known == 0 || ElementCount % known != 0)
                throw new ArgumentException($"cannot reshape {this} to [{string.Join(", ", shape)}]");
            s[infer] = (int)(ElementCount / known);
        }
        if (CountElements(s) != ElementCount)
            throw new ArgumentException($"cannot reshape {this} ({ElementCount} elements) to [{string.Join(", ", shape)}]");
        return new Tensor(Device, Buffer, ByteOffset, DType, s, OnHost);
    }

    /// <summary>A view of rows [start, start+length) along the first dimension.</summary>
    public Tensor Slice(int start, int length)
    {
        ThrowIfDisposed();
        if (Rank == 0) throw new InvalidOperationException("cannot slice a scalar tensor");
        if (start < 0 || length < 0 || start + length > Shape[0])
            throw new ArgumentOutOfRangeException(nameof(start), $"slice [{start}, {start + length}) of {this} along dim 0");
        var s = (int[])Shape.Clone();
        s[0] = length;
        return new Tensor(Device, Buffer, ByteOffset + start * Strides[0] * DType.SizeOf(), DType, s, OnHost);
    }

    // ---- host round trips (tests, loading, checkpoints) ----

    public void CopyFrom<T>(ReadOnlySpan<T> source) where T : unmanaged
    {
        var view = View<T>();
        if (source.Length != view.Length)
            throw new ArgumentException($"{this} holds {view.Length} elements, the source has {source.Length}");
        Device.Accelerator.Synchronize();
        view.CopyFromCPU(source);
    }

    /// <summary>Writes raw bytes (e.g. straight from a memory-mapped checkpoint) into the tensor.</summary>
    public void CopyFromBytes(ReadOnlySpan<byte> source)
    {
        if (source.Length != ByteLength)
            throw new ArgumentException($"{this} holds {ByteLength} bytes, the source has {source.Length}");
        Device.Accelerator.Synchronize();
        if (source.Length > 0) RawBytes().CopyFromCPU(source);
    }

    /// <summary>The raw bytes of the tensor on the host.</summary>
    public byte[] ToBytes()
    {
        var result = new byte[ByteLength];
        Device.Accelerator.Synchronize();
        if (result.Length > 0) RawBytes().CopyToCPU(result.AsSpan());
        return result;
    }

    public T[] ToArray<T>() where T : unmanaged
    {
        var view = View<T>();
        var result = new T[view.Length];
        Device.Accelerator.Synchronize();
        view.CopyToCPU(result.AsSpan());
        return result;
    }

    /// <summary>Writes floats, converting to the tensor's float dtype (round to nearest even).</summary>
    public void CopyFromFloats(ReadOnlySpan<float> source)
    {
        switch (DType)
        {
            case DType.F32: CopyFrom(source); break;
            case DType.BF16:
            case DType.F16: CopyFrom<ushort>(DType.ToHalfBits(source)); break;
            default: throw new InvalidOperationException($"CopyFromFloats needs a float tensor, got {this}");
        }
    }

    /// <summary>Reads the elements as floats (exact for every float dtype).</summary>
    public float[] ToFloatArray()
    {
        switch (DType)
        {
            case DType.F32: return ToArray<float>();
            case DType.BF16:
            case DType.F16:
                var bits = ToArray<ushort>();
                var result = new float[bits.Length];
                for (int i = 0; i < bits.Length; i++)
                    result[i] = DType == DType.BF16 ? FloatBits.Bf16ToFloat(bits[i]) : FloatBits.HalfToFloat(bits[i]);
                return result;
            default: throw new InvalidOperationException($"ToFloatArray needs a float tensor, got {this}");
        }
    }

    /// <summary>Fills every byte and waits for it; 0xFF makes every f32/bf16/f16 element a NaN (tests poison outputs with it).</summary>
    public void FillBytes(byte value)
    {
        MemSet(value);
        Device.Accelerator.Synchronize();
    }

    /// <summary>Zeroes every byte without waiting (on CUDA the memset joins the shared stream).</summary>
    public void ZeroBytes() => MemSet(0);

    // ordered after the kernels queued before it: on the CPU they finish first, as before a native call
    private void MemSet(byte value)
    {
        ThrowIfDisposed();
        Device.BeforeNativeCall();
        Device.CountMemset();
        Buffer.AsRawArrayView(ByteOffset, ByteLength).MemSet(value);
    }

    /// <summary>Sets every element to NaN so that unwritten outputs are caught.</summary>
    public void Poison() => FillBytes(0xFF);

    private void ThrowIfDisposed()
    {
        if (_disposed) throw new ObjectDisposedException(ToString());
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_block != null) Device.Release(_block);
        _ownBuffer?.Dispose(); // paged and host memory go back to the native core
    }
}
