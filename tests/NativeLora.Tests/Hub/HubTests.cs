using System.Text;
using NativeLora.Hub;
using NativeLora.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Hub;

/// <summary>Hub ids resolved through the shared Hugging Face cache, and downloads from a loopback server that answers like the Hub.</summary>
public class HubTests : TempDirTests
{
    private const string C1 = "1111111111111111111111111111111111111111", C0 = "0000000000000000000000000000000000000abc";
    private string _cache = null!;
    private FakeHub _hub = null!;
    private Dictionary<string, byte[]> _files = null!;

    [SetUp]
    public void SetUp()
    {
        _cache = Path.Combine(Dir, "hub-cache");
        var model = Path.Combine(Dir, "source");
        RandomInit.SaveModelDirectory(model, new ModelConfig
        {
            ModelType = "llama", VocabSize = 64, HiddenSize = 32, IntermediateSize = 48, NumLayers = 1, NumHeads = 4, NumKvHeads = 2,
            HeadDim = 8, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 64,
        }, null, seed: 1, global::NativeLora.Tensors.DType.F32);
        _files = Directory.GetFiles(model).ToDictionary(Path.GetFileName!, File.ReadAllBytes);
        _files["pytorch_model.bin"] = Encoding.ASCII.GetBytes("not wanted: only safetensors are fetched");
        var old = new Dictionary<string, byte[]>(_files) { ["config.json"] = Encoding.UTF8.GetBytes(Encoding.UTF8.GetString(_files["config.json"]).Replace("\"rms_norm_eps\"", "\"old\": true, \"rms_norm_eps\"")) };
        _hub = new FakeHub();
        _hub.Add(new FakeHub.Repo("acme/tiny", new() { ["main"] = C1, ["v1"] = C0 }, new() { [C1] = _files, [C0] = old }));
        _hub.Add(new FakeHub.Repo("acme/gated", new() { ["main"] = C1 }, new() { [C1] = _files }, Gated: true));
        _hub.Add(new FakeHub.Repo("acme/ghost", new() { ["main"] = C1 }, new() { [C1] = _files }, Ghosts: ["ghost.json"]));
    }

    [TearDown]
    public void StopHub() => _hub.Dispose();

    private HubSettings Settings(string? token = FakeHub.Token, bool offline = false, string? endpoint = null) =>
        new(_cache, new Uri(endpoint ?? _hub.Url), token, offline);

    private string Repo => Path.Combine(_cache, "models--acme--tiny");

    [Test]
    public void DownloadsIntoTheSharedCacheLayoutAndSendsTheTokenOnlyToTheHub()
    {
        var dir = ModelSource.Resolve("acme/tiny", Settings());
        Assert.That(dir, Is.EqualTo(Path.Combine(Repo, "snapshots", C1)));
        Assert.That(File.ReadAllText(Path.Combine(Repo, "refs", "main")), Is.EqualTo(C1));
        foreach (var (name, bytes) in _files.Where(f => f.Key != "pytorch_model.bin"))
        {
            var pointer = Path.Combine(dir, name);
            var etag = FakeHub.Etag(name, bytes);
            Assert.That(new FileInfo(pointer).LinkTarget, Is.EqualTo(Path.Combine("..", "..", "blobs", etag)), $"{name} is a relative link into blobs/, as huggingface_hub makes it");
            Assert.That(File.ReadAllBytes(pointer), Is.EqualTo(bytes), name);
            Assert.That(File.Exists(Path.Combine(_cache, ".locks", "models--acme--tiny", etag + ".lock")), Is.True, "downloads hold a lock under .locks/");
        }
        Assert.That(File.Exists(Path.Combine(dir, "pytorch_model.bin")), Is.False, "only configs, tokenizer files and safetensors are fetched");
        Assert.That(Directory.GetFiles(Path.Combine(Repo, "blobs"), "*.incomplete"), Is.Empty);
        Assert.That(ModelDirectory.ReadConfig(dir).HiddenSize, Is.EqualTo(32));

        var log = _hub.Log.ToList();
        Assert.That(log.Where(l => l.Host == "hub").All(l => l.Auth == $"Bearer {FakeHub.Token}"), Is.True, "the token goes to the Hub");
        Assert.That(log.Where(l => l.Host == "cdn").ToList(), Is.Not.Empty.And.All.Matches<(string Host, string Method, string Path, string? Auth, string? Range)>(l => l.Auth == null),
            "no Authorization header follows the LFS redirect to another host");

        // a second resolution finds every blob: no file is fetched again
        int gets = log.Count(l => l.Method == "GET" && l.Path.Contains("/resolve/") || l.Host == "cdn");
        Assert.That(ModelSource.Resolve("acme/tiny", Settings()), Is.EqualTo(dir));
        Assert.That(_hub.Log.Count(l => l.Method == "GET" && l.Path.Contains("/resolve/") || l.Host == "cdn"), Is.EqualTo(gets));
    }

    [Test]
    public void ResumesAPartialDownloadWithARangeRequest()
    {
        var weights = _files["model.safetensors"];
        var sha = FakeHub.Sha256(weights);
        Directory.CreateDirectory(Path.Combine(Repo, "blobs"));
        int half = weights.Length / 2;
        File.WriteAllBytes(Path.Combine(Repo, "blobs", sha + ".incomplete"), weights[..half]);
        var dir = ModelSource.Resolve("acme/tiny", Settings());
        Assert.That(_hub.Log.Where(l => l.Host == "cdn").Select(l => l.Range), Does.Contain($"bytes={half}-"));
        Assert.That(File.ReadAllBytes(Path.Combine(dir, "model.safetensors")), Is.EqualTo(weights));
        Assert.That(File.Exists(Path.Combine(Repo, "blobs", sha + ".incomplete")), Is.False);
    }

    [Test]
    public void ACorruptedDownloadIsRefusedAndNothingIsLinked()
    {
        var sha = FakeHub.Sha256(_files["model.safetensors"]);
        _hub.Corrupt.Add(sha);
        var e = Assert.Throws<HubException>(() => ModelSource.Resolve("acme/tiny", Settings()))!;
        Assert.That(e.Message, Does.Contain("acme/tiny").And.Contain("model.safetensors").And.Contain("does not match").And.Contain("sha256"));
        Assert.That(File.Exists(Path.Combine(Repo, "blobs", sha)), Is.False);
        Assert.That(File.Exists(Path.Combine(Repo, "blobs", sha + ".incomplete")), Is.False);
        Assert.That(File.Exists(Path.Combine(Repo, "snapshots", C1, "model.safetensors")), Is.False);
        // a regular file is checked against its git blob SHA-1
        var config = Path.Combine(Dir, "config.json");
        File.WriteAllBytes(config, _files["config.json"]);
        Assert.That(HubClient.Verify(config, FakeHub.GitSha1(_files["config.json"])), Is.Null);
        File.AppendAllText(config, " ");
        Assert.That(HubClient.Verify(config, FakeHub.GitSha1(_files["config.json"])), Does.StartWith("git SHA-1"));
    }

    [Test]
    public void ARevisionMayBeABranchATagOrACommit()
    {
        var tag = ModelSource.Resolve("acme/tiny@v1", Settings());
        Assert.That(tag, Is.EqualTo(Path.Combine(Repo, "snapshots", C0)));
        Assert.That(File.ReadAllText(Path.Combine(Repo, "refs", "v1")), Is.EqualTo(C0));
        Assert.That(File.ReadAllText(Path.Combine(tag, "config.json")), Does.Contain("\"old\": true"));
        var commit = ModelSource.Resolve($"acme/tiny@{C1}", Settings());
        Assert.That(commit, Is.EqualTo(Path.Combine(Repo, "snapshots", C1)));
        Assert.That(File.Exists(Path.Combine(Repo, "refs", C1)), Is.False, "a commit needs no ref");
        Assert.That(ModelSource.Resolve("acme/tiny", Settings()), Is.EqualTo(commit), "main is C1");
        // both snapshots share the unchanged weights' blob
        Assert.That(Directory.GetFiles(Path.Combine(Repo, "blobs")).Count(f => !f.EndsWith(".incomplete")), Is.EqualTo(3));
    }

    [Test]
    public void EachFailureIsOneClearErrorToldApartByXErrorCode()
    {
        Assert.That(Assert.Throws<HubException>(() => ModelSource.Resolve("acme/gated", Settings(token: null)))!.Message,
            Does.Contain("acme/gated: the repository is gated").And.Contain("HF_TOKEN"));
        Assert.That(ModelSource.Resolve("acme/gated", Settings()), Does.EndWith(C1), "with a token the gated repository downloads");
        Assert.That(Assert.Throws<HubException>(() => ModelSource.Resolve("acme/missing", Settings(token: null)))!.Message,
            Does.Contain("acme/missing: repository not found").And.Contain("without a token").And.EndWith("there is no local directory 'acme/missing' either"));
        Assert.That(Assert.Throws<HubException>(() => ModelSource.Resolve("acme/tiny@nope", Settings()))!.Message,
            Does.Contain("revision 'nope' not found"));
        Assert.That(Assert.Throws<HubException>(() => ModelSource.Resolve("acme/ghost", Settings()))!.Message,
            Does.Contain("acme/ghost: file 'ghost.json' not found"));
        int requests = _hub.Log.Count;
        Assert.That(Assert.Throws<HubException>(() => ModelSource.Resolve("acme/tiny", Settings(offline: true)))!.Message,
            Does.Contain("not in the Hugging Face cache").And.Contain("HF_HUB_OFFLINE=1"));
        Assert.That(_hub.Log.Count, Is.EqualTo(requests), "offline sends nothing");
    }

    [Test]
    public void ACachePreparedByHuggingFaceHubIsReadOfflineAndWhenTheHubIsUnreachable()
    {
        // the layout huggingface_hub writes: refs/main, blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>
        Directory.CreateDirectory(Path.Combine(Repo, "refs"));
        File.WriteAllText(Path.Combine(Repo, "refs", "main"), C1);
        Directory.CreateDirectory(Path.Combine(Repo, "blobs"));
        Directory.CreateDirectory(Path.Combine(Repo, "snapshots", C1));
        foreach (var (name, bytes) in _files.Where(f => f.Key != "pytorch_model.bin"))
        {
            var etag = FakeHub.Etag(name, bytes);
            File.WriteAllBytes(Path.Combine(Repo, "blobs", etag), bytes);
            File.CreateSymbolicLink(Path.Combine(Repo, "snapshots", C1, name), Path.Combine("..", "..", "blobs", etag));
        }
        var expected = Path.Combine(Repo, "snapshots", C1);
        Assert.That(ModelSource.Resolve("acme/tiny", Settings(offline: true)), Is.EqualTo(expected));
        Assert.That(ModelSource.Resolve($"acme/tiny@{C1}", Settings(offline: true)), Is.EqualTo(expected));
        var closed = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        closed.Start();
        var port = ((System.Net.IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        Assert.That(ModelSource.Resolve("acme/tiny", Settings(endpoint: $"http://127.0.0.1:{port}/")), Is.EqualTo(expected), "an unreachable Hub falls back to the cache");
        Assert.That(Assert.Throws<HubException>(() => ModelSource.Resolve("acme/other", Settings(endpoint: $"http://127.0.0.1:{port}/")))!.Message,
            Does.Contain("cannot be reached").And.Contain("does not hold it"));
        Assert.That(_hub.Log, Is.Empty);
    }

    [Test]
    public void AnExistingLocalPathWinsAndOtherNamesPassThrough()
    {
        var cwd = Environment.CurrentDirectory;
        try
        {
            Environment.CurrentDirectory = Dir;
            Directory.CreateDirectory(Path.Combine(Dir, "acme", "tiny"));
            Assert.That(ModelSource.Resolve("acme/tiny", Settings()), Is.EqualTo("acme/tiny"));
            Assert.That(_hub.Log, Is.Empty);
        }
        finally { Environment.CurrentDirectory = cwd; }
        foreach (var notAnId in new[] { "runs/demo/model", "./x/y", "/abs/path", "llama3-8b", "a/b--c", "a/../b", "org/name@" })
            Assert.That(ModelSource.Resolve(notAnId, Settings()), Is.EqualTo(notAnId), notAnId);
        Assert.That(HubId.TryParse("meta-llama/Llama-3.2-1B@v1.0", out var id) && id.Repo == "meta-llama/Llama-3.2-1B" && id.Revision == "v1.0", Is.True);
        Assert.That(id.CacheFolder, Is.EqualTo("models--meta-llama--Llama-3.2-1B"));
    }

    [Test]
    public void SettingsAreReadFromTheEnvironmentAsHuggingFaceHubReadsThem()
    {
        var home = Path.Combine(Dir, "hf-home");
        Directory.CreateDirectory(home);
        File.WriteAllText(Path.Combine(home, "token"), "hf_from_file\n");
        HubSettings With(params (string, string)[] vars) { var d = vars.ToDictionary(v => v.Item1, v => v.Item2); return HubSettings.From(k => d.GetValueOrDefault(k)); }
        var userCache = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub");
        Assert.That(With().CacheRoot, Is.EqualTo(userCache));
        Assert.That(With().Endpoint.ToString(), Is.EqualTo("https://huggingface.co/"));
        Assert.That(With(("XDG_CACHE_HOME", "/x")).CacheRoot, Is.EqualTo("/x/huggingface/hub"));
        Assert.That(With(("XDG_CACHE_HOME", "/x"), ("HF_HOME", home)).CacheRoot, Is.EqualTo(Path.Combine(home, "hub")));
        Assert.That(With(("HF_HOME", home), ("HF_HUB_CACHE", "/c")).CacheRoot, Is.EqualTo("/c"));
        Assert.That(With(("HF_HOME", home)).Token, Is.EqualTo("hf_from_file"));
        Assert.That(With(("HF_HOME", home), ("HF_TOKEN", "hf_env")).Token, Is.EqualTo("hf_env"));
        Assert.That(With(("HF_ENDPOINT", "http://127.0.0.1:9/")).Endpoint.ToString(), Is.EqualTo("http://127.0.0.1:9/"));
        Assert.That(With(("HF_HUB_OFFLINE", "1")).Offline && !With(("HF_HUB_OFFLINE", "0")).Offline && !With().Offline, Is.True);
    }

    [Test]
    public void TheLauncherTakesAHubIdAndDrawsNoStackTrace()
    {
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = _hub.Url, ["HF_HUB_CACHE"] = _cache, ["HF_TOKEN"] = FakeHub.Token };
        var (code, stdout, stderr) = Cli.CliTests.RunWithEnv(env, "train", "--model", "acme/tiny", "--lora-r", "4", "--dry-run");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("trainable parameters:").And.Contain("\"model\": \"acme/tiny\""), "the config keeps the id (it becomes the adapter's base_model_name_or_path)");
        Assert.That(stderr, Does.Contain("downloading acme/tiny/model.safetensors"));
        env["HF_HUB_OFFLINE"] = "1";
        (code, stdout, stderr) = Cli.CliTests.RunWithEnv(env, "generate", "--model", "acme/tiny", "--prompt-ids", "1,2,3", "--print-ids", "--max-new-tokens", "2");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout.Trim(), Does.Match(@"^\d+(,\d+)*$"));
        var plain = stdout;

        // an adapter that names its base by Hub id: generate without --model loads that base (offline, from the cache)
        var adapterDir = Path.Combine(Dir, "lora");
        using (var model = ModelDirectory.Load(Support.TestDevice.Shared, Path.Combine(Repo, "snapshots", C1), global::NativeLora.Tensors.DType.F32))
            Kernels.MultiLoraTests.SaveRandomAdapter(model, adapterDir, new global::NativeLora.Lora.LoraConfig { R = 4, Alpha = 8, BaseModelNameOrPath = "acme/tiny" }, 7);
        var withBase = Cli.CliTests.RunWithEnv(env, "generate", "--adapter", adapterDir, "--prompt-ids", "1,2,3", "--print-ids", "--max-new-tokens", "2");
        var withModel = Cli.CliTests.RunWithEnv(env, "generate", "--model", "acme/tiny", "--adapter", adapterDir, "--prompt-ids", "1,2,3", "--print-ids", "--max-new-tokens", "2");
        Assert.That(withBase.Code, Is.EqualTo(0), withBase.Err);
        Assert.That(withBase.Out, Is.EqualTo(withModel.Out), "the adapter's base_model_name_or_path stands for --model");
        TestContext.Progress.WriteLine($"base {plain.Trim()}, with adapter {withBase.Out.Trim()}");

        (code, _, stderr) = Cli.CliTests.RunWithEnv(env, "generate", "--model", "acme/absent", "--prompt-ids", "1");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr.Trim().Split('\n')[^1], Does.StartWith("error: acme/absent: not in the Hugging Face cache"));
        Assert.That(stderr, Does.Not.Contain("   at "));
    }
}
