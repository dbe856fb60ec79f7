namespace NativeLora.Gguf;

/// <summary>
/// A GGUF file is malformed. The message starts with the file path and names the metadata key or
/// the tensor when one is involved, so a log line alone locates the problem.
/// </summary>
public sealed class GgufFormatException : Exception
{
    public string FilePath { get; }
    /// <summary>The tensor name or metadata key the problem is in, when there is one.</summary>
    public string? Item { get; }

    public GgufFormatException(string filePath, string message, string? item = null, Exception? inner = null)
        : base(item is null ? $"{filePath}: {message}" : $"{filePath}: {item}: {message}", inner)
    {
        FilePath = filePath;
        Item = item;
    }
}
