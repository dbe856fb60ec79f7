using RustTokenizer = Tokenizers.DotNet.Tokenizer;
using RustTokenizerException = Tokenizers.DotNet.TokenizerException;

namespace NativeLora.Text;

/// <summary>
/// A Hugging Face tokenizer directory (<c>tokenizer.json</c>, plus <c>tokenizer_config.json</c>,
/// <c>special_tokens_map.json</c> and <c>chat_template.jinja</c> when present), with the semantics of
/// transformers' fast tokenizers. The tokenization itself is the Rust <c>tokenizers</c> crate through
/// Tokenizers.DotNet.
/// </summary>
/// <remarks>
/// Tokenizers.DotNet only exposes <c>encode(text, add_special_tokens: true)</c> and
/// <c>decode(ids, skip_special_tokens: true)</c>. The other two modes come from a second instance
/// loaded from a copy of tokenizer.json with no post-processor and no added token marked special
/// (see <see cref="HfTokenizerFiles.WithoutSpecialTokenHandling"/>): its encode adds nothing and its
/// decode skips nothing, and neither change affects how text is split or tokens are decoded.
/// </remarks>
public sealed class HfTokenizer : IDisposable
{
    readonly RustTokenizer _full;   // the files as they are: post-processor on, special tokens skipped in decode
    readonly RustTokenizer _plain;  // no post-processor, nothing special
    readonly Dictionary<string, int> _tokenToId;
    readonly string?[] _idToToken;
    readonly bool _cleanUpSpaces;
    readonly bool _llamaTemplate;   // see Load: add_bos_token/add_eos_token replace the post-processor
    bool _disposed;

    /// <summary>The directory the tokenizer was loaded from.</summary>
    public string Directory { get; }
    /// <summary>Highest token id + 1, added tokens included (HF <c>len(tokenizer)</c>). The model's
    /// embedding may have more rows (Qwen pads to a multiple of 128); ids past this have no token.</summary>
    public int VocabSize => _idToToken.Length;
    public string? BosToken { get; }
    public string? EosToken { get; }
    public string? PadToken { get; }
    public string? UnkToken { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PadId { get; }
    public int? UnkId { get; }
    /// <summary><c>add_bos_token</c>/<c>add_eos_token</c> from tokenizer_config.json (null when absent).</summary>
    public bool? AddBosToken { get; }
    public bool? AddEosToken { get; }
    /// <summary>The default chat template (Jinja source), or null when the model has none.</summary>
    public string? ChatTemplate { get; }
    /// <summary>All named chat templates (config lists of {name, template}); "default" is <see cref="ChatTemplate"/>.</summary>
    public IReadOnlyDictionary<string, string> ChatTemplates { get; }

    HfTokenizer(string directory, RustTokenizer full, RustTokenizer plain, HfTokenizerFiles.Vocabulary vocab, HfTokenizerFiles.Config config)
    {
        Directory = directory;
        _full = full;
        _plain = plain;
        _tokenToId = vocab.TokenToId;
        _idToToken = vocab.IdToToken;
        _cleanUpSpaces = config.CleanUpTokenizationSpaces;
        AddBosToken = config.AddBosToken;
        AddEosToken = config.AddEosToken;
        ChatTemplates = config.ChatTemplates;
        ChatTemplate = config.ChatTemplates.GetValueOrDefault("default");
        (BosToken, BosId) = Resolve(config.BosToken, "bos_token", config);
        (EosToken, EosId) = Resolve(config.EosToken, "eos_token", config);
        (PadToken, PadId) = Resolve(config.PadToken, "pad_token", config);
        (UnkToken, UnkId) = Resolve(config.UnkToken, "unk_token", config);

        // transformers' LlamaTokenizerFast rebuilds the post-processor from add_bos_token (default true)
        // and add_eos_token (default false) instead of using tokenizer.json's (update_post_processor);
        // TGI and swift-transformers do the same. Other classes use tokenizer.json's post-processor.
        _llamaTemplate = config.TokenizerClass is "LlamaTokenizer" or "LlamaTokenizerFast";
        if (_llamaTemplate)
        {
            if ((AddBosToken ?? true) && BosId == null)
                throw new InvalidDataException($"{config.Source}: add_bos_token is true but there is no bos_token");
            if ((AddEosToken ?? false) && EosId == null)
                throw new InvalidDataException($"{config.Source}: add_eos_token is true but there is no eos_token");
        }
    }

    (string?, int?) Resolve(string? token, string key, HfTokenizerFiles.Config config)
    {
        if (token == null) return (null, null);
        if (!_tokenToId.TryGetValue(token, out int id))
            throw new InvalidDataException($"{config.SourceOf(key)}: {key} '{token}' is not a token of tokenizer.json");
        return (token, id);
    }

    /// <summary>The files of a tokenizer directory (those present are copied by <see cref="CopyFiles"/>).</summary>
    public static readonly string[] FileNames = { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja" };

    /// <summary>Copies the tokenizer files that exist in from (plus extra names, e.g. generation_config.json) into to.</summary>
    public static void CopyFiles(string from, string to, params string[] extra)
    {
        System.IO.Directory.CreateDirectory(to);
        foreach (var f in FileNames.Concat(extra))
            if (File.Exists(Path.Combine(from, f))) File.Copy(Path.Combine(from, f), Path.Combine(to, f), overwrite: true);
    }

    /// <summary>Loads a tokenizer directory. Missing or malformed files raise exceptions whose message names the file.</summary>
    public static HfTokenizer Load(string modelDir)
    {
        string dir = Path.GetFullPath(Hub.ModelSource.Resolve(modelDir));
        if (!System.IO.Directory.Exists(dir))
            throw new DirectoryNotFoundException($"tokenizer directory not found: {dir}");
        string jsonPath = Path.Combine(dir, "tokenizer.json");
        if (!File.Exists(jsonPath))
            throw new FileNotFoundException(
                $"{jsonPath}: not found; a Hugging Face tokenizer directory must contain tokenizer.json " +
                "(folders with only a SentencePiece tokenizer.model are not supported)", jsonPath);

        byte[] json = HfTokenizerFiles.ReadFile(jsonPath);
        var vocab = HfTokenizerFiles.ReadVocabulary(json, jsonPath);
        var config = HfTokenizerFiles.ReadConfig(dir);

        RustTokenizer full = LoadRust(jsonPath, jsonPath);
        RustTokenizer? plain = null;
        string tmp = Path.Combine(Path.GetTempPath(), $"nativelora-tokenizer-{Guid.NewGuid():N}.json");
        try
        {
            File.WriteAllBytes(tmp, HfTokenizerFiles.WithoutSpecialTokenHandling(json, jsonPath));
            plain = LoadRust(tmp, jsonPath); // the crate reads the whole file while loading
            return new HfTokenizer(dir, full, plain, vocab, config);
        }
        catch
        {
            full.Dispose();
            plain?.Dispose();
            throw;
        }
        finally
        {
            File.Delete(tmp);
        }
    }

    static RustTokenizer LoadRust(string path, string reportedPath)
    {
        try { return new RustTokenizer(path); }
        catch (RustTokenizerException e) { throw new InvalidDataException($"{reportedPath}: {e.Message}", e); }
    }

    /// <summary>
    /// Token ids of <paramref name="text"/>. With <paramref name="addSpecialTokens"/>, the post-processor
    /// of tokenizer.json adds what the model expects (Mistral's TemplateProcessing adds <c>&lt;s&gt;</c>;
    /// Qwen's adds nothing; Llama 3's adds <c>&lt;|begin_of_text|&gt;</c> in the Hub's current files, but
    /// the original April 2024 tokenizer.json has a bare ByteLevel post-processor that adds nothing), except for
    /// LlamaTokenizer configs, where add_bos_token/add_eos_token decide (as in transformers).
    /// Special-token strings inside the text (e.g. <c>&lt;|im_start|&gt;</c>) become their ids either way.
    /// Chat templates write the BOS token themselves (Llama 3's starts with bos_token), so text rendered
    /// from a template should be encoded with addSpecialTokens false.
    /// </summary>
    public int[] Encode(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!addSpecialTokens || _llamaTemplate)
        {
            uint[] ids = _plain.Encode(text);
            if (!addSpecialTokens) return ToInt(ids, 0, 0);
            bool bos = AddBosToken ?? true, eos = AddEosToken ?? false;
            int[] result = ToInt(ids, bos ? 1 : 0, eos ? 1 : 0);
            if (bos) result[0] = BosId!.Value;
            if (eos) result[^1] = EosId!.Value;
            return result;
        }
        return ToInt(_full.Encode(text), 0, 0);
    }

    static int[] ToInt(uint[] ids, int before, int after)
    {
        var result = new int[before + ids.Length + after];
        for (int i = 0; i < ids.Length; i++) result[before + i] = checked((int)ids[i]);
        return result;
    }

    /// <summary>
    /// Text of <paramref name="ids"/> as transformers decodes it: the tokenizer.json decoder, special
    /// tokens dropped if <paramref name="skipSpecialTokens"/>, then the English clean-up of
    /// "clean_up_tokenization_spaces" (" ." → "." etc.) when tokenizer_config.json asks for it
    /// (Llama 3's does, so its decode does not always return the encoded text).
    /// Incomplete UTF-8 byte sequences come out as U+FFFD. Ids outside [0, VocabSize) throw.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var raw = new uint[ids.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)ids[i] >= (uint)_idToToken.Length)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {ids[i]} at position {i} is outside the vocabulary [0, {_idToToken.Length})");
            raw[i] = (uint)ids[i];
        }
        string text = (skipSpecialTokens ? _full : _plain).Decode(raw);
        return _cleanUpSpaces ? CleanUpTokenization(text) : text;
    }

    /// <summary>transformers' <c>clean_up_tokenization</c>: removes spaces before punctuation and English contractions.</summary>
    static string CleanUpTokenization(string text) => text
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s")
        .Replace(" 've", "'ve").Replace(" 're", "'re");

    /// <summary>The id of a vocabulary or added token (exact string, e.g. "▁Hello" or "Ġworld"), or null.</summary>
    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out int id) ? id : null;

    /// <summary>The token string of an id (as stored in tokenizer.json), or null if there is none.</summary>
    public string? IdToToken(int id) => (uint)id < (uint)_idToToken.Length ? _idToToken[id] : null;

    /// <summary>
    /// The longest token string of the vocabulary: no token covers more input characters (a byte-level
    /// token's string has a character per byte; a SentencePiece piece one per character), so the first
    /// n tokens of a text lie within its first n·MaxTokenChars characters.
    /// </summary>
    public int MaxTokenChars => _maxTokenChars ??= Math.Max(1, _idToToken.Max(t => t?.Length ?? 0));
    private int? _maxTokenChars;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _full.Dispose();
        _plain.Dispose();
    }
}
