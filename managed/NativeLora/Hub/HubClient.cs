using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace NativeLora.Hub;

/// <summary>A Hub download failed for a reason the user can act on (gated, not found, offline, corrupted).</summary>
public sealed class HubException(string message, bool notFound = false) : Exception(message)
{
    /// <summary>The repository, revision or file does not exist (as far as this token can see).</summary>
    public bool NotFound { get; } = notFound;
}

/// <summary>Bytes of one file received so far (Done) of its size (Total).</summary>
public sealed record HubDownloadProgress(string Repo, string File, long Done, long Total);

/// <summary>
/// Downloads a revision's files into the shared cache, as huggingface_hub's snapshot_download does:
/// the file list from `GET {endpoint}/api/models/{repo}/revision/{revision}` (`sha`, `siblings`), each file's
/// metadata from `HEAD {endpoint}/{repo}/resolve/{commit}/{file}` (X-Repo-Commit; ETag, or X-Linked-Etag and
/// X-Linked-Size on an LFS file's redirect), then the bytes into `blobs/{etag}.incomplete` under a lock,
/// resumed with a Range request, checked (size; sha256 for LFS, git blob SHA-1 otherwise) and moved into place.
/// The token goes to the Hub only: a redirect to another host (the LFS CDN) is followed without it.
/// </summary>
public sealed class HubClient : IDisposable
{
    private readonly HttpClient _http;
    private readonly HubSettings _settings;
    private readonly HubCache _cache;

    public IProgress<HubDownloadProgress>? Progress { get; init; }

    public HubClient(HubSettings settings, HubCache cache)
    {
        _settings = settings;
        _cache = cache;
        _http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false }) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.ParseAdd($"nativelora/{typeof(HubClient).Assembly.GetName().Version}");
    }

    public void Dispose() => _http.Dispose();

    /// <summary>Makes the cache hold every wanted file of the revision; returns the snapshot folder.</summary>
    public string Download(HubId id, Func<string, bool> wanted)
    {
        var (commit, files) = ListFiles(id);
        _cache.WriteRef(id, commit);
        var snapshot = _cache.SnapshotFolder(id, commit);
        foreach (var file in files.Where(wanted))
            if (!File.Exists(Path.Combine(snapshot, file))) Fetch(id, commit, file);
        Directory.CreateDirectory(snapshot);
        return snapshot;
    }

    private (string Commit, List<string> Files) ListFiles(HubId id)
    {
        var url = new Uri(_settings.Endpoint, $"api/models/{id.Repo}/revision/{Uri.EscapeDataString(id.Revision)}");
        using var response = Send(HttpMethod.Get, url, range: 0, out _);
        if (!response.IsSuccessStatusCode) throw Failure(response, id, null);
        JsonObject json;
        try { json = JsonNode.Parse(response.Content.ReadAsStringAsync().GetAwaiter().GetResult()) as JsonObject ?? throw new FormatException("not an object"); }
        catch (Exception e) when (e is System.Text.Json.JsonException or FormatException) { throw new HubException($"{id}: {url} did not answer a model description ({e.Message})"); }
        var sha = json["sha"]?.GetValue<string>();
        if (sha == null || !HubId.IsCommit(sha)) throw new HubException($"{id}: {url} gave no commit sha");
        var files = (json["siblings"] as JsonArray ?? new JsonArray()).Select(s => s?["rfilename"]?.GetValue<string>()).OfType<string>().ToList();
        return (sha, files);
    }

    private void Fetch(HubId id, string commit, string file)
    {
        var url = new Uri(_settings.Endpoint, $"{id.Repo}/resolve/{commit}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}");
        // metadata: the HEAD answer, or the redirect that points at the LFS store (it carries X-Linked-*)
        string etag;
        long size;
        Uri location;
        using (var head = Send(HttpMethod.Head, url, range: 0, out location))
        {
            if (!head.IsSuccessStatusCode && !IsRedirect(head.StatusCode)) throw Failure(head, id, file);
            etag = Header(head, "X-Linked-Etag") ?? head.Headers.ETag?.Tag ?? Header(head, "ETag")
                ?? throw new HubException($"{id}: {file}: the Hub gave no ETag, so the download cannot be checked");
            etag = etag.Replace("W/", "").Trim('"');
            var sizeText = Header(head, "X-Linked-Size") ?? head.Content.Headers.ContentLength?.ToString();
            size = long.TryParse(sizeText, out var s) ? s : -1;
            if (Header(head, "X-Repo-Commit") is string c && c != commit)
                throw new HubException($"{id}: {file}: the Hub served commit {c} for commit {commit}");
        }
        if (etag.Length == 0 || etag.Contains('/') || etag.Contains("..")) throw new HubException($"{id}: {file}: unusable ETag '{etag}'");
        var blob = _cache.Blob(id, etag);
        if (!File.Exists(blob))
        {
            var lockPath = _cache.Lock(id, etag);
            Directory.CreateDirectory(Path.GetDirectoryName(lockPath)!);
            Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
            using var held = AcquireLock(lockPath, id, file);
            if (!File.Exists(blob)) DownloadBlob(id, file, location, blob, etag, size);
        }
        _cache.Link(id, commit, file, etag);
    }

    private void DownloadBlob(HubId id, string file, Uri location, string blob, string etag, long size)
    {
        var incomplete = blob + ".incomplete";
        long have = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
        if (size >= 0 && have > size) { File.Delete(incomplete); have = 0; }
        using (var response = Send(HttpMethod.Get, location, range: have, out _))
        {
            if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable && size >= 0 && have == size) { }
            else
            {
                if (!response.IsSuccessStatusCode) throw Failure(response, id, file);
                bool resumed = response.StatusCode == HttpStatusCode.PartialContent && have > 0;
                if (!resumed) have = 0; // the server sent the whole file
                using var body = response.Content.ReadAsStream();
                using var output = new FileStream(incomplete, resumed ? FileMode.Append : FileMode.Create, FileAccess.Write);
                var buffer = new byte[1 << 20];
                long done = have, total = size >= 0 ? size : (response.Content.Headers.ContentLength ?? -1) + have;
                Progress?.Report(new HubDownloadProgress(id.Repo, file, done, total));
                int n;
                while ((n = body.Read(buffer)) > 0)
                {
                    output.Write(buffer, 0, n);
                    done += n;
                    if (size >= 0 && done > size) break;
                    Progress?.Report(new HubDownloadProgress(id.Repo, file, done, total));
                }
            }
        }
        var got = new FileInfo(incomplete).Length;
        string? problem = size >= 0 && got != size ? $"{got:N0} bytes arrived, the Hub announced {size:N0}" : Verify(incomplete, etag);
        if (problem != null)
        {
            File.Delete(incomplete);
            throw new HubException($"{id}: {file}: the download does not match the Hub's ETag ({problem}); it was removed, run again");
        }
        File.Move(incomplete, blob, overwrite: true);
    }

    /// <summary>null when the file hashes to its ETag: sha256 (64 hex digits, LFS files) or git's blob SHA-1 (40, regular files); other ETags are not content hashes.</summary>
    internal static string? Verify(string path, string etag)
    {
        if (etag.Length is not (64 or 40) || !etag.All(Uri.IsHexDigit)) return null;
        bool lfs = etag.Length == 64;
        using var f = File.OpenRead(path);
        using var hash = IncrementalHash.CreateHash(lfs ? HashAlgorithmName.SHA256 : HashAlgorithmName.SHA1);
        if (!lfs) hash.AppendData(Encoding.ASCII.GetBytes($"blob {f.Length}\0")); // git hashes a header, then the content
        var buffer = new byte[1 << 20];
        int n;
        while ((n = f.Read(buffer)) > 0) hash.AppendData(buffer, 0, n);
        var got = Convert.ToHexStringLower(hash.GetHashAndReset());
        return got == etag.ToLowerInvariant() ? null : $"{(lfs ? "sha256" : "git SHA-1")} {got}, expected {etag}";
    }

    // Sends with the token to the Hub's own host, following redirects: relative or same-host ones with the
    // token, a cross-host one (the LFS store) without it. HEAD stops at a cross-host redirect, whose headers
    // describe the file; `location` is where its bytes are.
    private HttpResponseMessage Send(HttpMethod method, Uri url, long range, out Uri location)
    {
        for (int hop = 0; ; hop++)
        {
            var request = new HttpRequestMessage(method, url);
            bool hub = SameOrigin(url, _settings.Endpoint);
            if (hub && _settings.Token != null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _settings.Token);
            if (range > 0) request.Headers.Range = new RangeHeaderValue(range, null);
            var response = _http.Send(request, HttpCompletionOption.ResponseHeadersRead);
            if (!IsRedirect(response.StatusCode) || response.Headers.Location == null || hop == 10)
            {
                location = url;
                return response;
            }
            var next = response.Headers.Location.IsAbsoluteUri ? response.Headers.Location : new Uri(url, response.Headers.Location);
            if (method == HttpMethod.Head && !SameOrigin(next, _settings.Endpoint))
            {
                location = next;
                return response;
            }
            response.Dispose();
            url = next;
        }
    }

    private static bool SameOrigin(Uri a, Uri b) => a.Scheme == b.Scheme && a.IdnHost == b.IdnHost && a.Port == b.Port;

    private static bool IsRedirect(HttpStatusCode c) => (int)c is 301 or 302 or 303 or 307 or 308;

    private static string? Header(HttpResponseMessage r, string name) =>
        r.Headers.TryGetValues(name, out var v) || r.Content.Headers.TryGetValues(name, out v) ? v.FirstOrDefault() : null;

    private HubException Failure(HttpResponseMessage r, HubId id, string? file)
    {
        var code = Header(r, "X-Error-Code");
        var message = Header(r, "X-Error-Message");
        var tokenHint = _settings.Token == null ? "set HF_TOKEN (or log in so that $HF_HOME/token exists)" : "check that your token may read it";
        bool notFound = code is "RepoNotFound" or "RevisionNotFound" or "EntryNotFound" || (code == null && r.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.NotFound);
        return new HubException(code switch
        {
            "GatedRepo" => $"{id}: the repository is gated: accept its conditions at {_settings.Endpoint}{id.Repo} and {tokenHint}",
            "RepoNotFound" => $"{id}: repository not found on {_settings.Endpoint} (a private or gated repository answers the same to a request without a token: {tokenHint})",
            "RevisionNotFound" => $"{id}: revision '{id.Revision}' not found (a branch, a tag or a commit sha)",
            "EntryNotFound" => $"{id}: file '{file}' not found at revision '{id.Revision}'",
            _ when r.StatusCode == HttpStatusCode.Unauthorized => $"{id}: the Hub answered 401 Unauthorized: the repository does not exist, or it is private or gated ({tokenHint})",
            _ => $"{id}{(file != null ? $": {file}" : "")}: the Hub answered {(int)r.StatusCode} {r.ReasonPhrase}{(message != null ? $": {message}" : "")}",
        }, notFound);
    }

    // huggingface_hub holds a file lock on .locks/models--org--name/{etag}.lock while it writes the blob; so do we
    private static FileStream AcquireLock(string path, HubId id, string file)
    {
        var deadline = DateTime.UtcNow.AddMinutes(10);
        while (true)
        {
            try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) when (DateTime.UtcNow < deadline) { Thread.Sleep(200); }
            catch (IOException) { throw new HubException($"{id}: {file}: another download holds {path} for over 10 minutes"); }
        }
    }
}
