using System.Text.RegularExpressions;

namespace NativeLora.Hub;

/// <summary>A Hugging Face Hub model repository and revision: `org/name` or `org/name@revision` (a branch, a tag or a commit sha).</summary>
public sealed partial record HubId(string Repo, string Revision)
{
    public const string DefaultRevision = "main";

    // the Hub's repo-id rule (huggingface_hub validate_repo_id): letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters
    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    private static partial Regex RepoPattern();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();

    /// <summary>`org/name[@revision]`; false for anything else (a local path, a preset name).</summary>
    public static bool TryParse(string text, out HubId id)
    {
        id = null!;
        int at = text.IndexOf('@');
        var repo = at < 0 ? text : text[..at];
        var revision = at < 0 ? DefaultRevision : text[(at + 1)..];
        if (repo.Length > 96 || !RepoPattern().IsMatch(repo) || repo.Contains("--") || repo.Contains("..") || repo.EndsWith('.')) return false;
        if (revision.Length == 0 || revision.Contains("..") || revision.StartsWith('/') || revision.Any(char.IsControl)) return false;
        id = new HubId(repo, revision);
        return true;
    }

    /// <summary>The cache folder huggingface_hub uses: models--org--name.</summary>
    public string CacheFolder => "models--" + Repo.Replace("/", "--");

    public bool RevisionIsCommit => IsCommit(Revision);

    public static bool IsCommit(string s) => CommitPattern().IsMatch(s);

    public override string ToString() => Revision == DefaultRevision ? Repo : $"{Repo}@{Revision}";
}
