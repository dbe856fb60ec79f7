using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace NativeLora.Tests.Hub;

/// <summary>
/// A loopback server that answers like the Hugging Face Hub, written from huggingface_hub's documentation
/// ("Download files", file_download.py, errors.py): `GET /api/models/{repo}/revision/{rev}` gives `sha` and
/// `siblings`; `HEAD|GET /{repo}/resolve/{rev}/{file}` answers a regular file with its bytes, ETag = git blob
/// SHA-1 and X-Repo-Commit, and an LFS file with a 302 to a second host (the CDN) carrying X-Linked-Etag
/// (sha256) and X-Linked-Size; the CDN honours Range. Errors carry X-Error-Code: RepoNotFound (401 without a
/// token), GatedRepo, RevisionNotFound, EntryNotFound.
/// </summary>
internal sealed class FakeHub : IDisposable
{
    public sealed record Repo(string Id, Dictionary<string, string> Refs, Dictionary<string, Dictionary<string, byte[]>> Commits, bool Gated = false, string[]? Ghosts = null);

    private readonly HttpListener _hub = new(), _cdn = new();
    private readonly Dictionary<string, Repo> _repos = new();
    private readonly Dictionary<string, byte[]> _lfs = new();

    public string Url { get; }
    public string CdnUrl { get; }
    public const string Token = "hf_test_token";
    /// <summary>Every request: host ("hub"/"cdn"), method, path, Authorization header, Range header.</summary>
    public ConcurrentQueue<(string Host, string Method, string Path, string? Auth, string? Range)> Log { get; } = new();
    /// <summary>sha256 of LFS blobs the CDN sends with one byte flipped.</summary>
    public HashSet<string> Corrupt { get; } = new();

    public FakeHub()
    {
        Url = Start(_hub, Hub);
        CdnUrl = Start(_cdn, Cdn);
    }

    private static string Start(HttpListener listener, Action<HttpListenerContext> handle)
    {
        for (int attempt = 0; ; attempt++)
        {
            var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            int port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            var url = $"http://127.0.0.1:{port}/";
            listener.Prefixes.Clear();
            listener.Prefixes.Add(url);
            try { listener.Start(); }
            catch (HttpListenerException) when (attempt < 5) { continue; }
            _ = Task.Run(async () =>
            {
                while (listener.IsListening)
                {
                    HttpListenerContext ctx;
                    try { ctx = await listener.GetContextAsync(); }
                    catch (Exception) { return; }
                    _ = Task.Run(() =>
                    {
                        try { handle(ctx); }
                        catch (Exception) { try { ctx.Response.StatusCode = 500; } catch (Exception) { } }
                        finally { try { ctx.Response.Close(); } catch (Exception) { } }
                    });
                }
            });
            return url;
        }
    }

    public static bool IsLfs(string file) => file.EndsWith(".safetensors");
    public static string Sha256(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));
    public static string GitSha1(byte[] b) => Convert.ToHexStringLower(SHA1.HashData(Encoding.ASCII.GetBytes($"blob {b.Length}\0").Concat(b).ToArray()));
    public static string Etag(string file, byte[] b) => IsLfs(file) ? Sha256(b) : GitSha1(b);

    public void Add(Repo repo)
    {
        _repos[repo.Id] = repo;
        foreach (var files in repo.Commits.Values)
            foreach (var (name, bytes) in files)
                if (IsLfs(name)) _lfs[Sha256(bytes)] = bytes;
    }

    private void Hub(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var res = ctx.Response;
        var path = Uri.UnescapeDataString(req.Url!.AbsolutePath);
        var auth = req.Headers["Authorization"];
        Log.Enqueue(("hub", req.HttpMethod, path, auth, req.Headers["Range"]));
        bool authorized = auth == $"Bearer {Token}";
        void Error(int status, string code, string message)
        {
            res.StatusCode = status;
            res.Headers["X-Error-Code"] = code;
            res.Headers["X-Error-Message"] = message;
        }

        string[] parts = path.Trim('/').Split('/');
        bool api = parts.Length >= 6 && parts[0] == "api" && parts[1] == "models" && parts[4] == "revision";
        string repoId = api ? $"{parts[2]}/{parts[3]}" : parts.Length >= 5 && parts[2] == "resolve" ? $"{parts[0]}/{parts[1]}" : "";
        if (!_repos.TryGetValue(repoId, out var repo))
        {
            // without a token the Hub cannot tell "missing" from "private": 401
            Error(authorized ? 404 : 401, "RepoNotFound", "Repository not found");
            return;
        }
        if (repo.Gated && !authorized)
        {
            Error(403, "GatedRepo", "Access to this repository is restricted");
            return;
        }
        var revision = api ? string.Join('/', parts[5..]) : parts[3];
        var commit = repo.Refs.TryGetValue(revision, out var c) ? c : repo.Commits.ContainsKey(revision) ? revision : null;
        if (commit == null)
        {
            Error(404, "RevisionNotFound", $"Invalid rev id: {revision}");
            return;
        }
        var files = repo.Commits[commit];
        if (api)
        {
            var body = new JsonObject
            {
                ["id"] = repo.Id, ["sha"] = commit, ["gated"] = repo.Gated,
                ["siblings"] = new JsonArray(files.Keys.Concat(repo.Ghosts ?? []).Select(f => (JsonNode)new JsonObject { ["rfilename"] = f }).ToArray()),
            };
            var bytes = Encoding.UTF8.GetBytes(body.ToJsonString());
            res.ContentType = "application/json";
            res.ContentLength64 = bytes.Length;
            res.OutputStream.Write(bytes);
            return;
        }
        var file = string.Join('/', parts[4..]);
        if (!files.TryGetValue(file, out var content))
        {
            res.Headers["X-Repo-Commit"] = commit;
            Error(404, "EntryNotFound", $"{file} does not exist on \"{revision}\"");
            return;
        }
        res.Headers["X-Repo-Commit"] = commit;
        if (IsLfs(file))
        {
            var sha = Sha256(content);
            res.StatusCode = 302;
            res.Headers["Location"] = $"{CdnUrl}blobs/{sha}";
            res.Headers["X-Linked-Etag"] = $"\"{sha}\"";
            res.Headers["X-Linked-Size"] = content.Length.ToString();
            res.Headers["ETag"] = $"\"{GitSha1(Encoding.ASCII.GetBytes("version https://git-lfs.github.com/spec/v1"))}\"";
            return;
        }
        res.Headers["ETag"] = $"\"{GitSha1(content)}\"";
        res.ContentLength64 = content.Length;
        if (req.HttpMethod == "GET") res.OutputStream.Write(content);
    }

    private void Cdn(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var res = ctx.Response;
        var path = req.Url!.AbsolutePath;
        var range = req.Headers["Range"];
        Log.Enqueue(("cdn", req.HttpMethod, path, req.Headers["Authorization"], range));
        var sha = path.Split('/').Last();
        if (!_lfs.TryGetValue(sha, out var content))
        {
            res.StatusCode = 404;
            return;
        }
        if (Corrupt.Contains(sha))
        {
            content = (byte[])content.Clone();
            content[content.Length / 2] ^= 0x5a;
        }
        long from = 0;
        if (range != null && range.StartsWith("bytes=") && range.EndsWith('-') && long.TryParse(range[6..^1], out var f) && f < content.Length)
        {
            from = f;
            res.StatusCode = 206;
            res.Headers["Content-Range"] = $"bytes {from}-{content.Length - 1}/{content.Length}";
        }
        res.ContentLength64 = content.Length - from;
        res.Headers["ETag"] = $"\"{sha}\"";
        if (req.HttpMethod == "GET") res.OutputStream.Write(content, (int)from, (int)(content.Length - from));
    }

    public void Dispose()
    {
        _hub.Stop();
        _cdn.Stop();
        _hub.Close();
        _cdn.Close();
    }
}
