namespace NativeLora.Gguf;

/// <summary>
/// One tensor of a GGUF file. <see cref="Dimensions"/> is ggml's order (ne[0] innermost);
/// <see cref="Shape"/> is the same reversed, i.e. the PyTorch shape. <see cref="Offset"/> is relative
/// to the data section, as on disk.
/// </summary>
public sealed record GgufTensorInfo(string Name, long[] Dimensions, GgmlType Type, long Offset, long ByteLength)
{
    public long[] Shape => Dimensions.Reverse().ToArray();

    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Dimensions) n *= d;
            return n;
        }
    }
}
