#!/usr/bin/env ruby
# frozen_string_literal: true

# A minimal stand-in for the BOSH director's job template rendering, so the release's
# templates can be tested without a director:
#
#   render.rb JOB_DIR PROPERTIES.json OUT_DIR [INSTANCE.json]
#
# PROPERTIES.json holds the instance group's properties for the job, nested as in a
# manifest ({"nats": {"servers": [...]}}). As BOSH does, only the properties the job's spec
# declares are visible, each the manifest's value or else the spec's default; `p(name)`
# raises for a property with neither, `p(name, default)` returns the default, `if_p(names)`
# yields only when every name is set. INSTANCE.json sets `spec` (name, index, id, address,
# ...). Each template is rendered with ERB's "-" trim mode into OUT_DIR/<destination>
# (files under bin/ are made executable). Every template is tried; the errors are printed
# one per line, naming the template, and the exit code is 1.

require 'erb'
require 'json'
require 'fileutils'
require 'ostruct'
require 'yaml'

# Raised by `p` for a property that is neither set nor defaulted, worded as BOSH words it.
class UnknownProperty < StandardError
  def initialize(names)
    super("Can't find property '#{names.join("', '")}'")
  end
end

# The object templates are evaluated against: BOSH's EvaluationContext, minus links.
class EvaluationContext
  attr_reader :spec

  def initialize(properties, spec)
    @properties = properties
    @spec = OpenStruct.new(spec)
  end

  def p(*args)
    names = Array(args[0])
    names.each do |name|
      value = lookup(name)
      return value unless value.nil?
    end
    return args[1] if args.length == 2

    raise UnknownProperty, names
  end

  def if_p(*names)
    values = names.map { |name| lookup(name) }
    return ActiveElseBlock.new(self) if values.any?(&:nil?)

    yield(*values)
    InactiveElseBlock.new
  end

  def get_binding
    binding
  end

  private

  def lookup(name)
    name.split('.').reduce(@properties) do |node, key|
      node.is_a?(Hash) ? node[key] : nil
    end
  end

  # `if_p(...) { }.else { }`, as in BOSH.
  class ActiveElseBlock
    def initialize(ctx)
      @ctx = ctx
    end

    def else
      yield
    end
  end

  class InactiveElseBlock
    def else; end
  end
end

def dig(hash, dotted)
  dotted.split('.').reduce(hash) { |node, key| node.is_a?(Hash) ? node[key] : nil }
end

def assign(hash, dotted, value)
  *parents, last = dotted.split('.')
  node = parents.reduce(hash) { |h, key| h[key] ||= {} }
  node[last] = value
end

if ARGV.length < 3 || ARGV.length > 4
  warn 'usage: render.rb JOB_DIR PROPERTIES.json OUT_DIR [INSTANCE.json]'
  exit 2
end
job_dir, properties_file, out_dir, instance_file = ARGV

job = YAML.safe_load(File.read(File.join(job_dir, 'spec')))
manifest = JSON.parse(File.read(properties_file))
instance = {
  'name' => job.fetch('name'), 'index' => 0, 'id' => '6a1c3e8e-0000-4000-8000-000000000000',
  'address' => '10.0.0.10', 'ip' => '10.0.0.10', 'az' => 'z1', 'deployment' => 'grouter',
  'bootstrap' => true
}
instance.merge!(JSON.parse(File.read(instance_file))) if instance_file

properties = {}
(job['properties'] || {}).each do |name, decl|
  value = dig(manifest, name)
  value = Marshal.load(Marshal.dump(decl['default'])) if value.nil? && decl.is_a?(Hash)
  assign(properties, name, value)
end

errors = []
job.fetch('templates').each do |source, destination|
  begin
    text = File.read(File.join(job_dir, 'templates', source))
    context = EvaluationContext.new(properties, instance)
    rendered = ERB.new(text, trim_mode: '-').result(context.get_binding)
    path = File.join(out_dir, destination)
    FileUtils.mkdir_p(File.dirname(path))
    File.write(path, rendered)
    File.chmod(0o755, path) if destination.start_with?('bin/')
  rescue StandardError, ScriptError => e
    errors << "Error filling in template '#{source}': #{e.message.lines.first.to_s.chomp}"
  end
end
errors.each { |e| warn e }
exit(errors.empty? ? 0 : 1)
