namespace NativeLora.Hub;

/// <summary>
/// The Hugging Face cache layout (huggingface_hub "Manage the cache"), shared with the Python tools:
/// `models--org--name/refs/{revision}` holds a commit sha; `snapshots/{commit}/{file}` are relative symlinks
/// to `blobs/{etag}`; a download in progress is `blobs/{etag}.incomplete`, guarded by `.locks/models--org--name/{etag}.lock`.
/// </summary>
public sealed class HubCache(string root)
{
    public string Root { get; } = root;

    public string RepoFolder(HubId id) => Path.Combine(Root, id.CacheFolder);

    /// <summary>The commit a revision points at in the cache: a commit sha stands for itself, a branch or tag is read from refs/.</summary>
    public string? CommitOf(HubId id)
    {
        if (id.RevisionIsCommit) return id.Revision;
        var refFile = Path.Combine(RepoFolder(id), "refs", id.Revision);
        if (!File.Exists(refFile)) return null;
        var commit = File.ReadAllText(refFile).Trim();
        return HubId.IsCommit(commit) ? commit : null;
    }

    /// <summary>The cached snapshot folder of a revision, or null when the cache does not hold it.</summary>
    public string? Snapshot(HubId id) =>
        CommitOf(id) is string commit && Directory.Exists(SnapshotFolder(id, commit)) ? SnapshotFolder(id, commit) : null;

    public string SnapshotFolder(HubId id, string commit) => Path.Combine(RepoFolder(id), "snapshots", commit);

    public string Blob(HubId id, string etag) => Path.Combine(RepoFolder(id), "blobs", etag);

    public string Lock(HubId id, string etag) => Path.Combine(Root, ".locks", id.CacheFolder, etag + ".lock");

    public void WriteRef(HubId id, string commit)
    {
        if (id.RevisionIsCommit) return;
        var refFile = Path.Combine(RepoFolder(id), "refs", id.Revision);
        Directory.CreateDirectory(Path.GetDirectoryName(refFile)!);
        if (File.Exists(refFile) && File.ReadAllText(refFile).Trim() == commit) return;
        File.WriteAllText(refFile, commit);
    }

    /// <summary>snapshots/{commit}/{file} → ../../blobs/{etag} (relative, as huggingface_hub links; a copy where links are not allowed).</summary>
    public void Link(HubId id, string commit, string file, string etag)
    {
        var pointer = Path.Combine(SnapshotFolder(id, commit), file);
        Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
        if (File.Exists(pointer) || new FileInfo(pointer).LinkTarget != null) File.Delete(pointer);
        var target = Path.GetRelativePath(Path.GetDirectoryName(pointer)!, Blob(id, etag));
        try { File.CreateSymbolicLink(pointer, target); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { File.Copy(Blob(id, etag), pointer); }
    }
}
