using System.Collections.Concurrent;
using System.Net.Http;

namespace NativeLora.Hub;

/// <summary>
/// Turns what a user gives as a model or adapter (a local directory, or a Hub id `org/name[@revision]`) into a
/// local directory. An existing local path always wins. An id is looked up in the Hugging Face cache the
/// Python tools share; what is missing is downloaded into it (config, tokenizer and safetensors files at
/// the top of the repository), unless HF_HUB_OFFLINE=1. When the Hub cannot be reached, a cached snapshot
/// is used, as huggingface_hub does. Every loader of models, tokenizers and adapters calls this first.
/// </summary>
public static class ModelSource
{
    private static readonly ConcurrentDictionary<string, string> s_resolved = new();

    /// <summary>Download progress of the files a resolution fetches (the CLI draws a bar on stderr).</summary>
    public static IProgress<HubDownloadProgress>? DownloadProgress { get; set; }

    /// <summary>The local directory for a path or Hub id; anything else comes back unchanged, for the loader to report.</summary>
    public static string Resolve(string pathOrId, HubSettings? settings = null)
    {
        if (Directory.Exists(pathOrId) || File.Exists(pathOrId) || !HubId.TryParse(pathOrId, out var id)) return pathOrId;
        if (settings == null && s_resolved.TryGetValue(pathOrId, out var known) && Directory.Exists(known)) return known;
        var s = settings ?? HubSettings.FromEnvironment();
        var cache = new HubCache(s.CacheRoot);
        string dir;
        // `runs/model` may be a mistyped local path as well as an id: the error says both
        var noLocal = $"; there is no local directory '{pathOrId}' either";
        if (s.Offline)
            dir = cache.Snapshot(id) ?? throw new HubException(
                $"{id}: not in the Hugging Face cache ({cache.Root}), and HF_HUB_OFFLINE=1 forbids downloading it{noLocal}", notFound: true);
        else
        {
            using var client = new HubClient(s, cache) { Progress = DownloadProgress };
            try { dir = client.Download(id, Wanted); }
            catch (HubException e) when (e.NotFound) { throw new HubException(e.Message + noLocal, notFound: true); }
            catch (HttpRequestException e) when (e.StatusCode == null)
            {
                dir = cache.Snapshot(id) ?? throw new HubException(
                    $"{id}: the Hub ({s.Endpoint}) cannot be reached ({e.Message}), and the Hugging Face cache ({cache.Root}) does not hold it{noLocal}");
            }
        }
        if (settings == null) s_resolved[pathOrId] = dir;
        return dir;
    }

    /// <summary>
    /// The base model an adapter names (adapter_config.json's base_model_name_or_path), as PEFT's
    /// AutoPeftModel reads it: what generate, eval, merge and export-gguf load when no --model is given.
    /// </summary>
    public static string BaseModelOf(string adapterPathOrId)
    {
        var name = Lora.PeftAdapterFile.ReadConfig(adapterPathOrId).BaseModelNameOrPath;
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException($"{adapterPathOrId}: adapter_config.json gives no base_model_name_or_path; give --model");
        return name;
    }

    /// <summary>The files a model or adapter needs: configs, tokenizer files and safetensors at the top of the repository (no .bin, .gguf or subfolders).</summary>
    public static bool Wanted(string file) =>
        !file.Contains('/') && Path.GetExtension(file).ToLowerInvariant() is ".json" or ".safetensors" or ".jinja" or ".model" or ".txt" or ".tiktoken";
}
