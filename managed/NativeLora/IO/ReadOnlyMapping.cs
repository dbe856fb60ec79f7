using System.IO.MemoryMappedFiles;

namespace NativeLora.IO;

/// <summary>
/// A whole file mapped read-only, with its base pointer acquired. The safetensors and GGUF readers
/// both sit on this, so the open/acquire/release order (and not leaking the handle when a header is
/// bad) lives in one place. The pointer is valid until Dispose.
/// </summary>
public sealed unsafe class ReadOnlyMapping : IDisposable
{
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    bool _disposed;

    public string Path { get; }
    public long Length { get; }
    public byte* Pointer { get; }

    ReadOnlyMapping(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* pointer, long length)
    {
        Path = path; _map = map; _view = view; Pointer = pointer; Length = length;
    }

    /// <summary>
    /// Maps path. A file shorter than minLength is refused with tooShort(length) before mapping,
    /// because a zero-length file cannot be mapped at all and a short one has no header to read.
    /// </summary>
    public static ReadOnlyMapping Open(string path, long minLength, Func<long, Exception> tooShort)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tooShort);
        FileStream? stream = null;
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        bool pointerAcquired = false;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            long length = stream.Length;
            if (length < minLength) throw tooShort(length);
            map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            stream = null; // the map owns it now
            view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            pointerAcquired = true;
            return new ReadOnlyMapping(path, map, view, p + view.PointerOffset, length);
        }
        catch
        {
            if (pointerAcquired) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            map?.Dispose();
            stream?.Dispose();
            throw;
        }
    }

    /// <summary>The readers on a mapping are disposed exactly when it is, so they ask it (owner names them in the exception).</summary>
    public void ThrowIfDisposed(object owner) => ObjectDisposedException.ThrowIf(_disposed, owner);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
