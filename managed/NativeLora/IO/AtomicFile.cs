namespace NativeLora.IO;

/// <summary>
/// Write-then-rename so a reader (or a crash) never sees a half-written file: the content goes to
/// a temporary file in the same directory (same filesystem, so the rename is atomic), is flushed
/// to disk, and then replaces the target. Checkpoints and exports use this.
/// </summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(write);
        string full = Path.GetFullPath(path);
        string directory = Path.GetDirectoryName(full) ?? throw new ArgumentException($"'{path}' has no parent directory", nameof(path));
        string temp = Path.Combine(directory, Path.GetFileName(full) + ".tmp-" + Convert.ToHexStringLower(Guid.NewGuid().ToByteArray(), 0, 8));
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                write(stream);
                stream.Flush(flushToDisk: true); // fsync before rename, or a crash can leave a renamed but empty file
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }
}
