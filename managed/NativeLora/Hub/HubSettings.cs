namespace NativeLora.Hub;

/// <summary>
/// Where the Hub cache is and how to reach the Hub, read from the environment the way huggingface_hub reads it:
/// cache `HF_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
/// endpoint `HF_ENDPOINT` (https://huggingface.co); token `HF_TOKEN`, else the file `HF_HOME/token`
/// (`HF_HOME` defaults to `XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`); `HF_HUB_OFFLINE=1`: cache only.
/// </summary>
public sealed record HubSettings(string CacheRoot, Uri Endpoint, string? Token, bool Offline)
{
    public static HubSettings FromEnvironment() => From(Environment.GetEnvironmentVariable);

    public static HubSettings From(Func<string, string?> env)
    {
        string? Get(string name) => string.IsNullOrEmpty(env(name)) ? null : env(name);
        var xdg = Get("XDG_CACHE_HOME") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        var home = Get("HF_HOME") ?? Path.Combine(xdg, "huggingface");
        var cache = Get("HF_HUB_CACHE") ?? Path.Combine(home, "hub");
        var endpoint = (Get("HF_ENDPOINT") ?? "https://huggingface.co").TrimEnd('/');
        var token = Get("HF_TOKEN");
        if (token == null)
        {
            var tokenFile = Path.Combine(home, "token");
            if (File.Exists(tokenFile)) token = File.ReadAllText(tokenFile).Trim() is { Length: > 0 } t ? t : null;
        }
        var offline = Get("HF_HUB_OFFLINE") is string o && o.Trim().ToLowerInvariant() is "1" or "true" or "yes" or "on";
        if (!Uri.TryCreate(endpoint + "/", UriKind.Absolute, out var uri)) throw new ArgumentException($"HF_ENDPOINT '{endpoint}' is not a URL");
        return new HubSettings(cache, uri, token, offline);
    }
}
