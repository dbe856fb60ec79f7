using System.Text.Json;
using System.Text.Json.Nodes;

namespace NativeLora.Text;

/// <summary>Reading the JSON files of a Hugging Face tokenizer directory. Every error names its file.</summary>
static class HfTokenizerFiles
{
    internal sealed record Vocabulary(Dictionary<string, int> TokenToId, string?[] IdToToken);

    internal sealed class Config
    {
        public required string Source { get; init; }   // tokenizer_config.json, or the directory when there is none
        public string? BosToken, EosToken, PadToken, UnkToken;
        public bool? AddBosToken, AddEosToken;
        public bool CleanUpTokenizationSpaces;
        public string? TokenizerClass;
        public Dictionary<string, string> ChatTemplates = new();
        public readonly Dictionary<string, string> TokenSources = new(); // "bos_token" -> the file it came from

        public string SourceOf(string key) => TokenSources.GetValueOrDefault(key, Source);
    }

    static readonly string[] TokenKeys = ["bos_token", "eos_token", "pad_token", "unk_token"];

    internal static byte[] ReadFile(string path)
    {
        try { return File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{path}: cannot read: {e.Message}", e);
        }
    }

    static JsonDocument ParseObject(byte[] bytes, string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: malformed JSON: {e.Message}", e); }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new InvalidDataException($"{path}: expected a JSON object at the top level");
        }
        return doc;
    }

    /// <summary>Token strings and ids: model.vocab (an object, or Unigram's [piece, score] list) plus added_tokens.</summary>
    internal static Vocabulary ReadVocabulary(byte[] json, string path)
    {
        using var doc = ParseObject(json, path);
        var root = doc.RootElement;
        var map = new Dictionary<string, int>(StringComparer.Ordinal);
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object
            || !model.TryGetProperty("vocab", out var vocab))
            throw new InvalidDataException($"{path}: no model.vocab");
        if (vocab.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in vocab.EnumerateObject())
            {
                if (!TryGetId(p.Value, out int id))
                    throw new InvalidDataException($"{path}: model.vocab[\"{p.Name}\"] is not a token id");
                map[p.Name] = id;
            }
        }
        else if (vocab.ValueKind == JsonValueKind.Array)
        {
            int id = 0; // Unigram: the id is the position
            foreach (var entry in vocab.EnumerateArray())
            {
                if (entry.ValueKind != JsonValueKind.Array || entry.GetArrayLength() < 1 || entry[0].ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: model.vocab[{id}] is not a [piece, score] pair");
                map[entry[0].GetString()!] = id++;
            }
        }
        else throw new InvalidDataException($"{path}: model.vocab is neither an object nor a list");

        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
        {
            foreach (var t in added.EnumerateArray())
            {
                if (t.ValueKind != JsonValueKind.Object
                    || !t.TryGetProperty("id", out var idEl) || !TryGetId(idEl, out int id)
                    || !t.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: an added_tokens entry lacks an id or content: {t.GetRawText()}");
                map[content.GetString()!] = id;
            }
        }

        int size = 0;
        foreach (int id in map.Values) size = Math.Max(size, id + 1);
        var idToToken = new string?[size];
        foreach (var (token, id) in map) idToToken[id] ??= token;
        // An added token that reuses a vocabulary id (Mistral's <unk>, <s>, </s>) names that id.
        if (root.TryGetProperty("added_tokens", out added) && added.ValueKind == JsonValueKind.Array)
            foreach (var t in added.EnumerateArray()) idToToken[t.GetProperty("id").GetInt32()] = t.GetProperty("content").GetString();
        return new Vocabulary(map, idToToken);
    }

    static bool TryGetId(JsonElement el, out int id)
    {
        id = -1;
        return el.ValueKind == JsonValueKind.Number && el.TryGetInt32(out id) && id >= 0;
    }

    /// <summary>
    /// tokenizer.json rewritten with <c>"post_processor": null</c> and every added token's <c>"special"</c>
    /// false: encoding then adds no special tokens and decoding keeps every token, while splitting text
    /// on added tokens (which ignores "special") and the decoder are unchanged. The rest of the bytes are
    /// copied as they are (the vocabulary and merges are most of the file).
    /// </summary>
    internal static byte[] WithoutSpecialTokenHandling(byte[] json, string path)
    {
        var edits = new List<(int Start, int End, byte[] With)>();
        var reader = new Utf8JsonReader(json);
        try
        {
            reader.Read(); // the top-level object, checked by ReadVocabulary
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                bool post = reader.ValueTextEquals("post_processor"u8), added = reader.ValueTextEquals("added_tokens"u8);
                reader.Read();
                int start = (int)reader.TokenStartIndex;
                reader.Skip();
                int end = (int)reader.BytesConsumed;
                if (post) edits.Add((start, end, "null"u8.ToArray()));
                else if (added && JsonNode.Parse(json.AsSpan(start, end - start)) is JsonArray tokens)
                {
                    foreach (var t in tokens) if (t is JsonObject o) o["special"] = false;
                    edits.Add((start, end, JsonSerializer.SerializeToUtf8Bytes(tokens)));
                }
            }
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: malformed JSON: {e.Message}", e); }

        using var result = new MemoryStream(json.Length);
        int pos = 0;
        foreach (var (start, end, with) in edits)
        {
            result.Write(json, pos, start - pos);
            result.Write(with);
            pos = end;
        }
        result.Write(json, pos, json.Length - pos);
        return result.ToArray();
    }

    /// <summary>tokenizer_config.json, special_tokens_map.json and chat_template.jinja, each optional.</summary>
    internal static Config ReadConfig(string dir)
    {
        string configPath = Path.Combine(dir, "tokenizer_config.json");
        string mapPath = Path.Combine(dir, "special_tokens_map.json");
        string jinjaPath = Path.Combine(dir, "chat_template.jinja");
        var config = new Config { Source = File.Exists(configPath) ? configPath : dir };
        bool hasAddedTokensDecoder = false;

        if (File.Exists(configPath))
        {
            using var doc = ParseObject(ReadFile(configPath), configPath);
            var root = doc.RootElement;
            hasAddedTokensDecoder = root.TryGetProperty("added_tokens_decoder", out _);
            ReadTokens(root, configPath, config);
            config.AddBosToken = ReadBool(root, "add_bos_token", configPath);
            config.AddEosToken = ReadBool(root, "add_eos_token", configPath);
            config.CleanUpTokenizationSpaces = ReadBool(root, "clean_up_tokenization_spaces", configPath) ?? false;
            if (root.TryGetProperty("tokenizer_class", out var cls) && cls.ValueKind == JsonValueKind.String)
                config.TokenizerClass = cls.GetString();
            if (root.TryGetProperty("chat_template", out var tmpl))
                config.ChatTemplates = ReadChatTemplates(tmpl, configPath);
        }

        // As in transformers: special_tokens_map.json is only read for configs without
        // added_tokens_decoder (older saves), and then its values win over tokenizer_config.json's.
        if (!hasAddedTokensDecoder && File.Exists(mapPath))
        {
            using var doc = ParseObject(ReadFile(mapPath), mapPath);
            ReadTokens(doc.RootElement, mapPath, config);
        }

        // Newer transformers save the template to chat_template.jinja, which takes priority over the config's.
        if (File.Exists(jinjaPath))
            config.ChatTemplates["default"] = System.Text.Encoding.UTF8.GetString(ReadFile(jinjaPath));
        return config;
    }

    static void ReadTokens(JsonElement root, string path, Config config)
    {
        foreach (var key in TokenKeys)
        {
            if (!root.TryGetProperty(key, out var el)) continue;
            // A token is a string or an AddedToken object {"content": ..., "lstrip": ...}; null means none.
            string? token = el.ValueKind switch
            {
                JsonValueKind.Null => null,
                JsonValueKind.String => el.GetString(),
                JsonValueKind.Object when el.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
                _ => throw new InvalidDataException($"{path}: {key} must be a string, an object with \"content\", or null; found {el.GetRawText()}"),
            };
            switch (key)
            {
                case "bos_token": config.BosToken = token; break;
                case "eos_token": config.EosToken = token; break;
                case "pad_token": config.PadToken = token; break;
                case "unk_token": config.UnkToken = token; break;
            }
            config.TokenSources[key] = path;
        }
    }

    static bool? ReadBool(JsonElement root, string key, string path)
    {
        if (!root.TryGetProperty(key, out var el)) return null;
        return el.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            JsonValueKind.Null => null,
            _ => throw new InvalidDataException($"{path}: {key} must be true or false; found {el.GetRawText()}"),
        };
    }

    /// <summary>A template string (the default), or a list of {"name", "template"} objects.</summary>
    static Dictionary<string, string> ReadChatTemplates(JsonElement el, string path)
    {
        var templates = new Dictionary<string, string>(StringComparer.Ordinal);
        switch (el.ValueKind)
        {
            case JsonValueKind.Null: break;
            case JsonValueKind.String: templates["default"] = el.GetString()!; break;
            case JsonValueKind.Array:
                foreach (var t in el.EnumerateArray())
                {
                    if (t.ValueKind != JsonValueKind.Object
                        || !t.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String
                        || !t.TryGetProperty("template", out var body) || body.ValueKind != JsonValueKind.String)
                        throw new InvalidDataException($"{path}: chat_template list entries must be {{\"name\": string, \"template\": string}}; found {t.GetRawText()}");
                    templates[name.GetString()!] = body.GetString()!;
                }
                break;
            default:
                throw new InvalidDataException($"{path}: chat_template must be a string or a list of {{name, template}}; found {el.ValueKind}");
        }
        return templates;
    }
}
