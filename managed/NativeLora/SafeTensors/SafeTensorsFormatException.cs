namespace NativeLora.SafeTensors;

/// <summary>
/// A safetensors file (or shard index) is malformed. The message always starts with the file
/// path and names the tensor when one is involved, so a log line alone locates the problem.
/// </summary>
public sealed class SafeTensorsFormatException : Exception
{
    public string FilePath { get; }
    public string? TensorName { get; }

    public SafeTensorsFormatException(string filePath, string message, string? tensorName = null, Exception? inner = null)
        : base(Compose(filePath, message, tensorName), inner)
    {
        FilePath = filePath;
        TensorName = tensorName;
    }

    static string Compose(string path, string message, string? tensor) =>
        tensor is null ? $"{path}: {message}" : $"{path}: tensor '{tensor}': {message}";
}
