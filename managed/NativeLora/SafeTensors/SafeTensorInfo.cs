namespace NativeLora.SafeTensors;

/// <summary>
/// One header entry. DataBegin/DataEnd are byte offsets into the data buffer (which starts
/// right after the 8 + N header bytes), end exclusive.
/// </summary>
public sealed record SafeTensorInfo(string Name, SafeTensorsDType DType, long[] Shape, long DataBegin, long DataEnd)
{
    public long ByteLength => DataEnd - DataBegin;

    /// <summary>Product of the shape; 1 for a scalar (shape []), 0 when any dimension is 0.</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape) n = checked(n * d);
            return n;
        }
    }

    public override string ToString() =>
        $"{Name}: {DType.ToHeaderString()}[{string.Join(", ", Shape)}] @ [{DataBegin}, {DataEnd})";
}
